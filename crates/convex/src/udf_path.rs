//! Function paths: `module:function`, canonicalised as Convex does (`.js` dropped from the
//! module, `default` when no export is named).

use std::fmt;

/// A canonical function path such as `messages:list`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UdfPath(String);

impl UdfPath {
    /// Parses `module[.js][:export]`; module segments are `[A-Za-z0-9_]` separated by `/`.
    pub fn parse(raw: &str) -> Result<UdfPath, String> {
        let (module, export) = match raw.split_once(':') {
            Some((m, e)) => (m, e),
            None => (raw, "default"),
        };
        let module = module.strip_suffix(".js").unwrap_or(module);
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !module.split('/').all(ident) || !ident(export) {
            return Err(format!("invalid function path `{}`", excerpt(raw)));
        }
        Ok(UdfPath(format!("{module}:{export}")))
    }

    /// From the `/api/run/{module/path/export}` form, where the last segment is the export.
    pub fn from_run_path(raw: &str) -> Result<UdfPath, String> {
        let (module, export) = raw
            .rsplit_once('/')
            .ok_or_else(|| format!("invalid function path `{}`", excerpt(raw)))?;
        UdfPath::parse(&format!("{module}:{export}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// At most the first 100 bytes of `raw` (cut at a character boundary, `…` after), for error
/// messages: a socket keeps a failed query's message while the query is in its set, and a
/// client decides how long the path it sends is.
pub fn excerpt(raw: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 100;
    if raw.len() <= MAX {
        return raw.into();
    }
    let mut end = MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &raw[..end]).into()
}

impl fmt::Display for UdfPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::UdfPath;

    #[test]
    fn canonical_forms() {
        assert_eq!(
            UdfPath::parse("messages:list").unwrap().as_str(),
            "messages:list"
        );
        assert_eq!(
            UdfPath::parse("messages.js:list").unwrap().as_str(),
            "messages:list"
        );
        assert_eq!(
            UdfPath::parse("dir/mod").unwrap().as_str(),
            "dir/mod:default"
        );
        assert_eq!(
            UdfPath::from_run_path("messages/list").unwrap().as_str(),
            "messages:list"
        );
        for bad in ["", ":x", "a:", "a b:c", "a:b:c", "../x:y"] {
            assert!(UdfPath::parse(bad).is_err(), "{bad}");
        }
    }
}
