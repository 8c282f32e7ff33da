//! What a channel knows about its room: what is playing (and what comes next), who is
//! here, their CyTube ranks and AFK state, and how many are connected.
//!
//! Everything comes from Kryten-Robot's events (`changeMedia`, `mediaUpdate`,
//! `setCurrent`, `playlist`, `queue`, `delete`, `moveVideo`, `userlist`, `addUser`,
//! `userLeave`, `setUserRank`, `setAFK`, `usercount`) or from the snapshot Kryten keeps in
//! JetStream ([`RoomSnapshot`]), never from a chat line: a rank is only ever what the
//! robot said it is, and an unknown user is a guest (rank 0). The state is bounded:
//! [`MAX_USERS`] users, [`MAX_PLAYLIST`] playlist entries, titles at CyTube's 100
//! characters (longer ones are cut). A snapshot never overrides an event seen after the
//! snapshot's read began: events that arrive later win.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use crate::contract::RoomSnapshot;
use crate::event::{self, After, Event, Media, PlaylistItem, RoomUser};
use crate::time::Millis;

/// Users tracked per channel; beyond it, newcomers are counted but not listed.
pub const MAX_USERS: usize = 10_000;
/// Playlist entries tracked per channel (CyTube's own default cap is 4,000; the bot only
/// needs what comes next, so it keeps the first 1,000).
pub const MAX_PLAYLIST: usize = 1_000;
/// Longest title kept, in characters (CyTube's own cap).
const MAX_TITLE: usize = 100;
/// Departures remembered so that an older snapshot cannot bring a leaver back.
const MAX_DEPARTED: usize = 256;
/// CyTube's moderator rank.
pub const MODERATOR: f64 = 2.0;

/// One person in the room.
#[derive(Debug, Clone, PartialEq)]
struct Person {
    name: Arc<str>,
    rank: f64,
    afk: bool,
    /// When an event last said something about them.
    touched: Millis,
}

/// What is playing.
#[derive(Debug, Clone, PartialEq)]
struct Playing {
    id: String,
    title: Arc<str>,
    seconds: Option<f64>,
    /// Position (s) at `at`, and whether it was paused then.
    position: f64,
    paused: bool,
    at: Millis,
}

impl Playing {
    fn of(m: &Media, at: Millis) -> Playing {
        Playing {
            id: m.id.clone(),
            title: Arc::from(cut(&m.title)),
            seconds: m.seconds,
            position: m.current_time,
            // A new item comes paused at -3 s: CyTube's lead-in, after which it plays.
            paused: m.paused && m.current_time > 0.0,
            at,
        }
    }

    /// Seconds into the item at `now`: extrapolated while playing, within its length.
    fn position(&self, now: Millis) -> f64 {
        let elapsed = if self.paused { 0.0 } else { now.0.saturating_sub(self.at.0) as f64 / 1000.0 };
        let p = (self.position + elapsed).max(0.0);
        self.seconds.map_or(p, |s| p.min(s))
    }
}

/// The channel's room.
#[derive(Debug, Clone, Default)]
pub(crate) struct Room {
    playing: Option<Playing>,
    /// When an event last set what is playing.
    playing_at: Option<Millis>,
    current_uid: Option<i64>,
    playlist: Vec<(i64, Arc<str>)>,
    playlist_at: Option<Millis>,
    people: BTreeMap<String, Person>,
    /// Names beyond [`MAX_USERS`] (counted, not listed).
    overflow: usize,
    departed: VecDeque<(String, Millis)>,
    /// When the last full `userlist` came.
    userlist_at: Option<Millis>,
    count: Option<u64>,
}

/// The room as a prompt states it: plain facts, bounded in size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Title, seconds in, length (if known), paused.
    pub playing: Option<(Arc<str>, f64, Option<f64>, bool)>,
    /// What comes next in the playlist.
    pub next: Option<Arc<str>>,
    /// How many are here (CyTube's count, or the users tracked).
    pub count: usize,
    /// Up to [`Facts::NAMES`] names of people present and not AFK, moderators first.
    pub names: Vec<Arc<str>>,
    /// Names of moderators (rank ≥ 2) present, at most [`Facts::NAMES`].
    pub moderators: Vec<Arc<str>>,
}

impl Facts {
    /// Names listed at most.
    pub const NAMES: usize = 20;

    /// Nothing known.
    pub fn is_empty(&self) -> bool {
        self.playing.is_none() && self.count == 0
    }
}

fn cut(title: &str) -> &str {
    match title.char_indices().nth(MAX_TITLE) {
        Some((i, _)) => &title[..i],
        None => title,
    }
}

fn key(name: &str) -> String {
    name.to_lowercase()
}

impl Room {
    /// Applies a room event seen at `now`; false for an event that is not about the room.
    pub fn apply(&mut self, event: &Event<'_>, now: Millis) -> bool {
        match event {
            Event::MediaChange(m) => {
                self.playing = Some(Playing::of(m, now));
                self.playing_at = Some(now);
                if m.uid.is_some() {
                    self.current_uid = m.uid;
                }
            }
            Event::MediaUpdate { current_time, paused } => {
                if let Some(p) = &mut self.playing {
                    p.position = *current_time;
                    p.paused = *paused;
                    p.at = now;
                }
            }
            Event::SetCurrent(uid) => self.current_uid = Some(*uid),
            Event::Playlist(items) => {
                self.set_playlist(items);
                self.playlist_at = Some(now);
            }
            Event::Queue { item, after } => self.queue(item, *after),
            Event::Delete(uid) => self.playlist.retain(|(u, _)| u != uid),
            Event::MoveVideo { from, after } => {
                if let Some(i) = self.playlist.iter().position(|(u, _)| u == from) {
                    let (uid, title) = self.playlist.remove(i);
                    self.insert(uid, title, *after);
                }
            }
            Event::UserJoined(u) => self.join(u, now),
            Event::UserLeft(name) => self.leave(name, now),
            Event::UserList(users) => {
                self.people.clear();
                self.overflow = 0;
                for u in users {
                    self.join(u, now);
                }
                self.userlist_at = Some(now);
            }
            Event::UserRank { name, rank } => {
                if let Some(p) = self.people.get_mut(&key(name)) {
                    p.rank = *rank;
                    p.touched = now;
                }
            }
            Event::UserAfk { name, afk } => {
                if let Some(p) = self.people.get_mut(&key(name)) {
                    p.afk = *afk;
                    p.touched = now;
                }
            }
            Event::UserCount(n) => self.count = Some(*n),
            _ => return false,
        }
        true
    }

    fn set_playlist(&mut self, items: &[PlaylistItem]) {
        self.playlist = items.iter().take(MAX_PLAYLIST).map(|i| (i.uid, Arc::from(cut(&i.title)))).collect();
    }

    fn queue(&mut self, item: &PlaylistItem, after: After) {
        self.playlist.retain(|(u, _)| *u != item.uid);
        self.insert(item.uid, Arc::from(cut(&item.title)), after);
    }

    fn insert(&mut self, uid: i64, title: Arc<str>, after: After) {
        let at = match after {
            After::Prepend => 0,
            After::Append => self.playlist.len(),
            After::Uid(a) => self.playlist.iter().position(|(u, _)| *u == a).map_or(self.playlist.len(), |i| i + 1),
        };
        if at < MAX_PLAYLIST {
            self.playlist.insert(at, (uid, title));
            self.playlist.truncate(MAX_PLAYLIST);
        }
    }

    fn join(&mut self, u: &RoomUser, now: Millis) {
        let k = key(&u.name);
        if self.people.len() >= MAX_USERS && !self.people.contains_key(&k) {
            self.overflow += 1;
            return;
        }
        self.departed.retain(|(d, _)| *d != k);
        self.people.insert(k, Person { name: Arc::from(u.name.as_str()), rank: u.rank, afk: u.afk, touched: now });
    }

    fn leave(&mut self, name: &str, now: Millis) {
        let k = key(name);
        if self.people.remove(&k).is_none() {
            self.overflow = self.overflow.saturating_sub(1);
        }
        if self.departed.len() == MAX_DEPARTED {
            self.departed.pop_front();
        }
        self.departed.push_back((k, now));
    }

    /// Fills in what Kryten-Robot keeps in JetStream, except what an event has said since
    /// the snapshot's read began (`read_at`): those events are newer.
    pub fn restore(&mut self, s: &RoomSnapshot, now: Millis) {
        let older = |at: Option<Millis>| at.is_none_or(|t| t < s.read_at);
        if let Some((body, written)) = &s.current {
            if let Some(m) = event::media(body).filter(|_| older(self.playing_at)) {
                // Written when the item started: a new item's lead-in has been playing
                // since, as far as anyone knows.
                let mut p = Playing::of(&m, *written);
                p.at = p.at.min(now);
                self.playing = Some(p);
                self.current_uid = m.uid.or(self.current_uid);
            }
        }
        if let Some(items) = s.items.as_deref().and_then(event::playlist).filter(|_| older(self.playlist_at)) {
            self.set_playlist(&items);
        }
        if let Some(users) = s.users.as_deref().and_then(event::users).filter(|_| older(self.userlist_at)) {
            let fresh = |p: &Person| p.touched >= s.read_at;
            // Gone from the snapshot and not seen since: they left while we were away.
            let listed: std::collections::BTreeSet<String> = users.iter().map(|u| key(&u.name)).collect();
            self.people.retain(|k, p| fresh(p) || listed.contains(k));
            for u in &users {
                let k = key(&u.name);
                let left_since = self.departed.iter().any(|(d, at)| *d == k && *at >= s.read_at);
                if left_since || self.people.get(&k).is_some_and(fresh) {
                    continue;
                }
                self.join(u, s.read_at.min(now).before(std::time::Duration::from_millis(1)));
            }
        }
    }

    /// Forgets what is playing (`forget`): the next `changeMedia` says it again. Who is
    /// here stays (moderators keep their rank).
    pub fn forget_media(&mut self) {
        self.playing = None;
        self.playing_at = None;
    }

    /// A user's CyTube rank as the robot reported it; 0 (guest) when unknown.
    pub fn rank(&self, name: &str) -> f64 {
        self.people.get(&key(name)).map_or(0.0, |p| p.rank)
    }

    /// The provider id and title of what is playing.
    pub fn playing(&self) -> Option<(&str, &str)> {
        self.playing.as_ref().map(|p| (p.id.as_str(), &*p.title))
    }

    /// Users tracked.
    pub fn users(&self) -> usize {
        self.people.len()
    }

    /// The facts for a prompt at `now`; `bot` is left out of the names.
    pub fn facts(&self, now: Millis, bot: &str) -> Facts {
        let playing = self.playing.as_ref().map(|p| (p.title.clone(), p.position(now), p.seconds, p.paused));
        let next = self.current_uid.and_then(|c| {
            let i = self.playlist.iter().position(|(u, _)| *u == c)?;
            self.playlist.get(i + 1).map(|(_, t)| t.clone())
        });
        let others = || self.people.values().filter(|p| !p.name.eq_ignore_ascii_case(bot));
        let moderators: Vec<Arc<str>> =
            others().filter(|p| p.rank >= MODERATOR).take(Facts::NAMES).map(|p| p.name.clone()).collect();
        let names = others()
            .filter(|p| !p.afk && p.rank >= MODERATOR)
            .chain(others().filter(|p| !p.afk && p.rank < MODERATOR))
            .take(Facts::NAMES)
            .map(|p| p.name.clone())
            .collect();
        let tracked = others().count() + self.overflow;
        // CyTube's count includes the bot and anonymous guests.
        let count = self.count.map_or(tracked, |c| (c as usize).saturating_sub(1).max(tracked));
        Facts { playing, next, count, names, moderators }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::parse;

    fn ev(name: &str, payload: &str) -> Event<'static> {
        let body = format!(r#"{{"event_name":"{name}","channel":"lounge","payload":{payload}}}"#);
        // Room events own their strings: leak the body to keep the tests short.
        parse(Box::leak(body.into_boxed_str()).as_bytes(), None).unwrap().event
    }

    const T: Millis = Millis(1_000_000);

    /// The join sequence of the real capture (shared/fixtures): playlist, setCurrent,
    /// changeMedia, userlist, usercount, then the bot's own addUser.
    fn joined() -> Room {
        let capture = include_str!("../../tests/fixtures/kryten-robot-1.12.6-session.jsonl");
        let mut room = Room::default();
        for line in capture.lines().filter(|l| !l.trim().is_empty()).take(22) {
            let env = parse(line.as_bytes(), None).unwrap();
            room.apply(&env.event, T);
        }
        room
    }

    #[test]
    fn the_real_join_sequence_says_what_is_playing_next_and_who_is_here() {
        let room = joined();
        let f = room.facts(T, "KrytenBot");
        let (title, pos, len, paused) = f.playing.clone().unwrap();
        assert_eq!(&*title, "Rick Astley - Never Gonna Give You Up");
        assert!((pos - 39.451).abs() < 0.01 && len == Some(213.0) && !paused);
        assert_eq!(f.next.as_deref(), Some("PSY - GANGNAM STYLE (강남스타일) M/V"));
        assert_eq!(f.names.iter().map(|n| &**n).collect::<Vec<_>>(), ["carol", "alice", "bob"]);
        assert_eq!(f.moderators.iter().map(|n| &**n).collect::<Vec<_>>(), ["carol"]);
        assert_eq!(f.count, 3, "usercount 4 includes the bot");
        assert_eq!((room.rank("CAROL"), room.rank("bob"), room.rank("nobody")), (2.0, 0.0, 0.0));
        assert_eq!(room.rank("KrytenBot"), 2.0);
    }

    #[test]
    fn the_position_runs_while_playing_and_stops_when_paused() {
        let mut room = joined();
        let later = T.after(std::time::Duration::from_secs(10));
        assert!((room.facts(later, "b").playing.unwrap().1 - 49.451).abs() < 0.01);
        room.apply(&ev("mediaUpdate", r#"{"currentTime":100.0,"paused":true}"#), later);
        let much_later = later.after(std::time::Duration::from_secs(60));
        assert_eq!(room.facts(much_later, "b").playing.unwrap().1, 100.0);
        room.apply(&ev("mediaUpdate", r#"{"currentTime":200.0,"paused":false}"#), much_later);
        let end = much_later.after(std::time::Duration::from_secs(3600));
        assert_eq!(room.facts(end, "b").playing.unwrap().1, 213.0, "never past the end");
    }

    #[test]
    fn users_join_leave_change_rank_and_go_afk() {
        let mut room = joined();
        room.apply(&ev("addUser", r#"{"name":"dave","rank":1,"meta":{"afk":false}}"#), T);
        room.apply(&ev("setUserRank", r#"{"name":"dave","rank":3}"#), T);
        room.apply(&ev("setAFK", r#"{"name":"alice","afk":true}"#), T);
        room.apply(&ev("userLeave", r#"{"name":"bob"}"#), T);
        let f = room.facts(T, "KrytenBot");
        assert_eq!(f.names.iter().map(|n| &**n).collect::<Vec<_>>(), ["carol", "dave"]);
        assert_eq!(room.rank("Dave"), 3.0);
        assert_eq!(room.rank("bob"), 0.0, "a leaver is a guest again");
    }

    #[test]
    fn playlist_edits_change_what_comes_next() {
        let mut room = joined();
        let next = |r: &Room| r.facts(T, "b").next.map(|t| t.to_string());
        let queue = r#"{"item":{"media":{"id":"z","title":"Zoo","seconds":19,"type":"yt"},"uid":9},"after":1}"#;
        room.apply(&ev("queue", queue), T);
        assert_eq!(next(&room).as_deref(), Some("Zoo"));
        room.apply(&ev("moveVideo", r#"{"from":9,"after":"append"}"#), T);
        assert_eq!(next(&room).as_deref(), Some("PSY - GANGNAM STYLE (강남스타일) M/V"));
        room.apply(&ev("delete", r#"{"uid":2}"#), T);
        room.apply(&ev("delete", r#"{"uid":3}"#), T);
        assert_eq!(next(&room).as_deref(), Some("Zoo"));
        room.apply(&ev("setCurrent", "9"), T);
        assert_eq!(next(&room), None, "the last entry has nothing after it");
    }

    #[test]
    fn the_room_is_bounded() {
        let mut room = Room::default();
        let list: Vec<String> = (0..MAX_USERS + 50).map(|i| format!(r#"{{"name":"u{i}","rank":0}}"#)).collect();
        room.apply(&ev("userlist", &format!("[{}]", list.join(","))), T);
        assert_eq!(room.users(), MAX_USERS);
        let f = room.facts(T, "bot");
        assert_eq!((f.count, f.names.len()), (MAX_USERS + 50, Facts::NAMES));
        let items: Vec<String> = (0..MAX_PLAYLIST + 5)
            .map(|i| format!(r#"{{"media":{{"id":"{i}","title":"{}"}},"uid":{i}}}"#, "t".repeat(300)))
            .collect();
        room.apply(&ev("playlist", &format!("[{}]", items.join(","))), T);
        room.apply(&ev("setCurrent", "0"), T);
        assert_eq!(room.playlist.len(), MAX_PLAYLIST);
        assert_eq!(room.facts(T, "b").next.unwrap().chars().count(), MAX_TITLE);
    }

    fn snapshot(read_at: Millis) -> RoomSnapshot {
        RoomSnapshot {
            channel: "lounge".into(),
            read_at,
            current: Some((
                br#"{"id":"k","title":"Despacito","seconds":282,"duration":"04:42","type":"yt","meta":{},"currentTime":-3,"paused":true,"uid":3}"#.to_vec(),
                read_at.before(std::time::Duration::from_secs(63)),
            )),
            items: Some(br#"[{"media":{"id":"k","title":"Despacito"},"uid":3},{"media":{"id":"z","title":"Zoo"},"uid":4}]"#.to_vec()),
            users: Some(br#"[{"name":"erin","rank":2,"meta":{"afk":false}},{"name":"frank","rank":0}]"#.to_vec()),
        }
    }

    #[test]
    fn a_snapshot_fills_an_empty_room() {
        let mut room = Room::default();
        let at = T;
        room.restore(&snapshot(at), at);
        let f = room.facts(at, "bot");
        let (title, pos, ..) = f.playing.unwrap();
        assert_eq!(&*title, "Despacito");
        assert!((pos - 60.0).abs() < 0.01, "63 s since it was written, 3 s of lead-in: {pos}");
        assert_eq!(f.next.as_deref(), Some("Zoo"));
        assert_eq!(room.rank("erin"), 2.0);
        assert_eq!(f.count, 2);
    }

    #[test]
    fn events_seen_after_the_read_began_win_over_the_snapshot() {
        let mut room = Room::default();
        let read_at = T;
        let later = T.after(std::time::Duration::from_millis(5));
        room.apply(
            &ev("changeMedia", r#"{"id":"n","title":"Newer","seconds":10,"currentTime":-3,"paused":true}"#),
            later,
        );
        room.apply(&ev("addUser", r#"{"name":"erin","rank":1}"#), later);
        room.apply(&ev("userLeave", r#"{"name":"frank"}"#), later);
        room.restore(&snapshot(read_at), later);
        let f = room.facts(later, "bot");
        assert_eq!(&*f.playing.unwrap().0, "Newer");
        assert_eq!(room.rank("erin"), 1.0, "the addUser after the read began wins");
        assert_eq!(f.names.iter().map(|n| &**n).collect::<Vec<_>>(), ["erin"], "frank left after the read began");
    }

    #[test]
    fn an_older_room_is_replaced_by_a_newer_snapshot() {
        let mut room = Room::default();
        room.apply(&ev("userlist", r#"[{"name":"gone","rank":5}]"#), T);
        let read_at = T.after(std::time::Duration::from_secs(60));
        room.restore(&snapshot(read_at), read_at);
        assert_eq!(room.rank("gone"), 0.0, "left while we were away");
        assert_eq!(room.rank("erin"), 2.0);
    }
}
