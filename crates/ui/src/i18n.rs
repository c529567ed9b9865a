//! Languages: one catalog file per language (`crates/ui/i18n/<tag>.toml`, flat `key = "text"`),
//! embedded in the binary. A request's language is its `?lang=` switch, else the `berth_lang`
//! cookie the switch set, else the best match of `Accept-Language`, else English. Adding a
//! language is one catalog file and one row in [`LANGUAGES`].

use std::collections::HashMap;
use std::sync::OnceLock;

use http::HeaderMap;

/// The cookie that remembers the language switch.
pub const LANG_COOKIE: &str = "berth_lang";

/// `(tag, its name in itself, catalog source)`, English first: it is the fallback.
const LANGUAGES: &[(&str, &str, &str)] = &[
    ("en", "English", include_str!("../i18n/en.toml")),
    ("zh-CN", "简体中文", include_str!("../i18n/zh-CN.toml")),
];

/// One language's strings.
pub struct Catalog {
    pub tag: &'static str,
    pub name: &'static str,
    strings: HashMap<String, String>,
}

impl Catalog {
    /// The text for `key`, from English when this catalog lacks it, else the key itself (a
    /// test keeps every catalog complete).
    pub fn get<'a>(&'a self, key: &'a str) -> &'a str {
        self.strings
            .get(key)
            .or_else(|| catalogs()[0].strings.get(key))
            .map(String::as_str)
            .unwrap_or(key)
    }

    /// The text for `key` with `{}` replaced by `value`.
    pub fn with(&self, key: &str, value: impl std::fmt::Display) -> String {
        self.get(key).replacen("{}", &value.to_string(), 1)
    }
}

fn parse(tag: &'static str, name: &'static str, source: &str) -> Catalog {
    // A malformed catalog fails the test suite (`catalogs_parse_and_agree`); at run time it
    // falls back to English rather than stopping the server.
    let strings: HashMap<String, String> = toml::from_str(source).unwrap_or_else(|e| {
        tracing::error!(language = tag, error = %e, "UI catalog does not parse");
        HashMap::new()
    });
    Catalog { tag, name, strings }
}

/// Every catalog, English first.
pub fn catalogs() -> &'static [Catalog] {
    static ALL: OnceLock<Vec<Catalog>> = OnceLock::new();
    ALL.get_or_init(|| {
        LANGUAGES
            .iter()
            .map(|(tag, name, source)| parse(tag, name, source))
            .collect()
    })
}

/// The catalog of a language tag (`zh`, `zh-Hans`, `zh-CN` all pick Simplified Chinese).
pub fn by_tag(tag: &str) -> Option<&'static Catalog> {
    let tag = tag.trim().to_ascii_lowercase();
    let all = catalogs();
    all.iter()
        .find(|c| c.tag.eq_ignore_ascii_case(&tag))
        .or_else(|| {
            let primary = tag.split('-').next().unwrap_or("");
            // Traditional Chinese readers are better served by English than by Simplified.
            if tag.starts_with("zh-tw") || tag.starts_with("zh-hk") || tag.contains("hant") {
                return None;
            }
            all.iter().find(|c| {
                c.tag
                    .split('-')
                    .next()
                    .is_some_and(|p| p.eq_ignore_ascii_case(primary))
            })
        })
}

/// The best catalog for an `Accept-Language` value, by its q-values.
pub fn negotiate(accept_language: &str) -> Option<&'static Catalog> {
    let mut ranges: Vec<(f32, usize, &str)> = accept_language
        .split(',')
        .enumerate()
        .filter_map(|(i, part)| {
            let mut fields = part.split(';');
            let range = fields.next()?.trim();
            let q = fields
                .filter_map(|f| f.trim().strip_prefix("q="))
                .find_map(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            (!range.is_empty() && q > 0.0).then_some((q, i, range))
        })
        .collect();
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    ranges.into_iter().find_map(|(_, _, range)| by_tag(range))
}

/// The language of a request: the switch, the remembered switch, the browser's preference.
pub fn for_request(headers: &HeaderMap, switch: Option<&str>) -> &'static Catalog {
    switch
        .and_then(by_tag)
        .or_else(|| berth_api::session::cookie(headers, LANG_COOKIE).and_then(by_tag))
        .or_else(|| {
            headers
                .get(http::header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .and_then(negotiate)
        })
        .unwrap_or(&catalogs()[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_parse_and_agree() {
        let english = &catalogs()[0];
        assert!(english.strings.len() > 50, "the English catalog parsed");
        for (tag, _, source) in LANGUAGES {
            let parsed: HashMap<String, String> =
                toml::from_str(source).unwrap_or_else(|e| panic!("{tag}.toml: {e}"));
            let mut missing: Vec<&String> = english
                .strings
                .keys()
                .filter(|k| !parsed.contains_key(*k))
                .collect();
            missing.sort();
            assert!(missing.is_empty(), "{tag}.toml lacks {missing:?}");
            let mut extra: Vec<&String> = parsed
                .keys()
                .filter(|k| !english.strings.contains_key(*k))
                .collect();
            extra.sort();
            assert!(
                extra.is_empty(),
                "{tag}.toml has keys English lacks: {extra:?}"
            );
        }
    }

    /// Every `t.get("…")` and `t.with("…", …)` in the templates and the code names a key the
    /// catalogs have, so no page shows a raw key.
    #[test]
    fn every_key_used_is_in_the_catalogs() {
        let english = &catalogs()[0];
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/templates");
        let mut sources: Vec<(String, String)> = std::fs::read_dir(dir)
            .expect("templates")
            .map(|e| {
                let path = e.expect("entry").path();
                let text = std::fs::read_to_string(&path).expect("template");
                (path.display().to_string(), text)
            })
            .collect();
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        for e in std::fs::read_dir(src).expect("src") {
            let path = e.expect("entry").path();
            sources.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).expect("source"),
            ));
        }
        let mut used = 0;
        for (file, text) in &sources {
            for opener in ["t.get(\"", "t.with(\""] {
                for (i, _) in text.match_indices(opener) {
                    let rest = &text[i + opener.len()..];
                    let key = &rest[..rest.find('"').unwrap_or(0)];
                    let is_key = |c: char| c.is_ascii_lowercase() || c == '.' || c == '_';
                    if key.is_empty() || !key.chars().all(is_key) {
                        continue;
                    }
                    used += 1;
                    assert!(
                        english.strings.contains_key(key),
                        "{file} uses unknown key {key}"
                    );
                }
            }
        }
        assert!(used > 50, "found {used} keys in use");
    }

    #[test]
    fn accept_language_is_negotiated_by_quality() {
        assert_eq!(
            negotiate("zh-CN,zh;q=0.9,en;q=0.8").map(|c| c.tag),
            Some("zh-CN")
        );
        assert_eq!(negotiate("zh").map(|c| c.tag), Some("zh-CN"));
        assert_eq!(negotiate("zh-Hans-CN").map(|c| c.tag), Some("zh-CN"));
        assert_eq!(
            negotiate("en;q=0.5, zh-CN;q=0.8").map(|c| c.tag),
            Some("zh-CN")
        );
        assert_eq!(negotiate("fr, en-GB;q=0.7").map(|c| c.tag), Some("en"));
        assert_eq!(negotiate("zh-TW").map(|c| c.tag), None);
        assert_eq!(negotiate("fr").map(|c| c.tag), None);
        assert_eq!(negotiate("zh-CN;q=0").map(|c| c.tag), None);
    }
}
