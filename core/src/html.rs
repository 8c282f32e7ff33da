//! CyTube chat HTML to plain text.
//!
//! CyTube sends `msg` as sanitised HTML: entities (`&lt;`, `&#39;`), `<strong>`/`<em>`/
//! `<code>` from its chat filters, auto-linked `<a href>` and `[sp]` spoilers as
//! `<span class="spoiler">`. Triggers and the LLM must see what a person reads, so tags go
//! and entities are decoded (by `html-escape`). Spoiler contents are replaced by
//! `[spoiler]`: the bot must not repeat what the room chose to hide.

use std::borrow::Cow;

/// Plain text of a CyTube `msg`. Borrows when there is nothing to decode (the common case).
pub fn to_plain_text(msg: &str) -> Cow<'_, str> {
    let (tags, entities) = msg.bytes().fold((false, false), |(t, e), b| (t || b == b'<', e || b == b'&'));
    if !tags && !entities {
        return Cow::Borrowed(msg);
    }
    let stripped = if tags { Cow::Owned(strip_tags(msg)) } else { Cow::Borrowed(msg) };
    Cow::Owned(decode_entities(&stripped))
}

/// The entities CyTube's own escaping writes, decoded by hand; any other entity sends the
/// text to `html-escape`, which knows them all.
fn decode_entities(text: &str) -> String {
    const COMMON: [(&str, char); 8] = [
        ("&lt;", '<'),
        ("&gt;", '>'),
        ("&amp;", '&'),
        ("&quot;", '"'),
        ("&#39;", '\''),
        ("&#x27;", '\''),
        ("&#40;", '('),
        ("&#41;", ')'),
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        match COMMON.iter().find(|(entity, _)| rest.starts_with(entity)) {
            Some((entity, c)) => {
                out.push(*c);
                rest = &rest[entity.len()..];
            }
            None => return html_escape::decode_html_entities(text).into_owned(),
        }
    }
    out.push_str(rest);
    out
}

/// Removes tags, keeping their text, and hides spoilers. Unbalanced `<` (not a tag) is
/// kept as text.
fn strip_tags(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    // Depth of nested spans inside a spoiler; 0 = not in a spoiler.
    let mut spoiler_depth = 0usize;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { break };
        let tag = &rest[open + 1..open + close];
        let is_tag = tag.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/');
        if !is_tag {
            if spoiler_depth == 0 {
                out.push_str(&rest[..open + 1]);
            }
            rest = &rest[open + 1..];
            continue;
        }
        if spoiler_depth == 0 {
            out.push_str(&rest[..open]);
        }
        let name: String = tag.trim_start_matches('/').chars().take_while(char::is_ascii_alphanumeric).collect();
        let closing = tag.starts_with('/');
        if name.eq_ignore_ascii_case("span") {
            if closing {
                if spoiler_depth > 0 {
                    spoiler_depth -= 1;
                    if spoiler_depth == 0 {
                        out.push_str("[spoiler]");
                    }
                }
            } else if spoiler_depth > 0 || tag.contains("spoiler") {
                spoiler_depth += 1;
            }
        } else if spoiler_depth == 0 && (name.eq_ignore_ascii_case("br") || name.eq_ignore_ascii_case("p")) {
            out.push(' ');
        }
        rest = &rest[open + close + 1..];
    }
    if spoiler_depth == 0 {
        out.push_str(rest);
    } else {
        out.push_str("[spoiler]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::to_plain_text;

    #[test]
    fn entities_links_and_bold_become_what_a_reader_sees() {
        let msg = "hey KrytenBot, is &lt;b&gt; safe? <strong>really</strong> see <a href=\"https://example.com\" target=\"_blank\" rel=\"noopener noreferrer\">https://example.com</a>";
        assert_eq!(to_plain_text(msg), "hey KrytenBot, is <b> safe? really see https://example.com");
    }

    #[test]
    fn numeric_entities_are_decoded() {
        assert_eq!(to_plain_text("it&#39;s &quot;fine&quot; &#40;ok&#41; &amp; done"), "it's \"fine\" (ok) & done");
    }

    #[test]
    fn spoiler_contents_are_hidden() {
        assert_eq!(to_plain_text("the end: <span class=\"spoiler\">he dies</span>!"), "the end: [spoiler]!");
        assert_eq!(to_plain_text("<span class=\"spoiler\">a <span>b</span> c</span> d"), "[spoiler] d");
    }

    proptest::proptest! {
        /// The hand-decoded entities read exactly as `html-escape` reads them, whatever
        /// surrounds them (other entities, bare ampersands, half entities).
        #[test]
        fn common_entities_decode_as_html_escape_does(
            parts in proptest::collection::vec(proptest::sample::select(vec![
                "&lt;", "&gt;", "&amp;", "&quot;", "&#39;", "&#x27;", "&#40;", "&#41;", "&", "&l", "&lt", "&amp",
                "&nbsp;", "&eacute;", "&#233;", "&#xe9;", "&#0;", "&#;", "&LT;", "&ltx", ";", "a", " b ", "é",
            ]), 0..12)
        ) {
            let text = parts.concat();
            proptest::prop_assert_eq!(super::decode_entities(&text), html_escape::decode_html_entities(&text).into_owned());
        }
    }

    #[test]
    fn plain_text_is_borrowed_untouched() {
        assert!(matches!(to_plain_text("just words"), std::borrow::Cow::Borrowed("just words")));
    }

    #[test]
    fn a_lone_angle_bracket_is_text_not_a_tag() {
        assert_eq!(to_plain_text("3 < 4 and 5 > 2"), "3 < 4 and 5 > 2");
        assert_eq!(to_plain_text("a <3 b"), "a <3 b");
        assert_eq!(to_plain_text("unclosed <strong"), "unclosed <strong");
    }
}
