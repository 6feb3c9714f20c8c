//! sqlcommenter tags: the key-value pairs that ORMs and tracing libraries append to a
//! statement as a comment, `/*traceparent='00-...-01',route='%2Fusers%2F%3Aid'*/`, which
//! name the application request behind the statement. Keys and values are URL-encoded,
//! values are single-quoted with `\'` for a quote. A comment that is not of that form
//! (`/* app:tag1 */`) is kept in the statement's text and yields no tags.

use std::collections::BTreeMap;

use percent_encoding::percent_decode_str;

use crate::literals::block_comments;

/// The sqlcommenter tags in the block comments of `text` (a later key wins).
pub fn sqlcommenter_tags(text: &str, standard_conforming_strings: bool) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::new();
    // Cheap test first: most statements have no block comment.
    if !text.contains("*/") {
        return tags;
    }
    for comment in block_comments(text, standard_conforming_strings) {
        if let Some(pairs) = parse_pairs(comment.trim()) {
            tags.extend(pairs);
        }
    }
    tags
}

/// `key='value'(,key='value')*`, or `None` when the comment is not of that form.
fn parse_pairs(comment: &str) -> Option<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = comment;
    while !rest.is_empty() {
        let (key, after_key) = rest.split_once('=')?;
        let key = key.trim();
        if key.is_empty() || key.contains(|c: char| c.is_whitespace() || c == ',' || c == '\'') {
            return None;
        }
        let mut chars = after_key.trim_start().char_indices();
        if chars.next()?.1 != '\'' {
            return None;
        }
        let body = after_key.trim_start();
        let mut value = String::new();
        let mut end = None;
        let mut escaped = false;
        for (at, c) in chars {
            match (escaped, c) {
                (true, c) => {
                    value.push(c);
                    escaped = false;
                }
                (false, '\\') => escaped = true,
                (false, '\'') => {
                    end = Some(at);
                    break;
                }
                (false, c) => value.push(c),
            }
        }
        let end = end?;
        pairs.push((decode(key), decode(&value)));
        rest = body[end + 1..].trim_start();
        if let Some(next) = rest.strip_prefix(',') {
            rest = next.trim_start();
            if rest.is_empty() {
                return None;
            }
        } else if !rest.is_empty() {
            return None;
        }
    }
    (!pairs.is_empty()).then_some(pairs)
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(text: &str) -> Vec<(String, String)> {
        sqlcommenter_tags(text, true).into_iter().collect()
    }

    #[test]
    fn sqlcommenter_pairs_are_decoded() {
        let text = "SELECT * FROM users /*action='%2Fparam*d',controller='index',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01'*/";
        assert_eq!(
            tags(text),
            vec![
                ("action".into(), "/param*d".into()),
                ("controller".into(), "index".into()),
                ("traceparent".into(), "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01".into()),
            ]
        );
        assert_eq!(tags("/*route='it\\'s'*/ SELECT 1"), vec![("route".into(), "it's".into())]);
    }

    #[test]
    fn other_comments_and_literals_are_not_tags() {
        assert!(tags("/* app:tag1 */ select 1").is_empty());
        assert!(tags("SELECT '/*route=''x''*/'").is_empty(), "inside a literal");
        assert!(tags("SELECT 1 /*a='b' c='d'*/").is_empty(), "not comma-separated");
        assert!(tags("SELECT 1 /*a='open*/").is_empty());
        assert!(tags("SELECT 1").is_empty());
    }
}
