//! Tool-name globs: `*` matches any run of characters (including none); nothing else is special.

/// A validated tool name or glob, split at `*` once so matching does no parsing.
#[derive(Debug, Clone)]
pub(crate) struct Glob {
    /// The literal runs between stars; `parts.len() == stars + 1`. Never empty.
    parts: Box<[Box<str>]>,
    /// Bytes of literal text: a name shorter than this cannot match.
    literal_bytes: usize,
    /// Characters of literal text: the precedence of this glob among others.
    literal_chars: usize,
}

impl Glob {
    /// Compiles a pattern that [`validate`] accepted.
    pub(crate) fn new(pattern: &str) -> Self {
        let parts: Box<[Box<str>]> = pattern.split('*').map(Box::from).collect();
        let literal_bytes = parts.iter().map(|p| p.len()).sum();
        let literal_chars = parts.iter().map(|p| p.chars().count()).sum();
        Self {
            parts,
            literal_bytes,
            literal_chars,
        }
    }

    /// The number of non-`*` characters: among globs matching a name, the one with most wins.
    pub(crate) fn literal_chars(&self) -> usize {
        self.literal_chars
    }

    /// Whether `name` matches. Greedy leftmost matching of the middle parts is exact for
    /// patterns whose only wildcard is `*`, so this is linear in `name.len()` per part.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let (first, rest) = match self.parts.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some((last, middle)) = rest.split_last() else {
            return name == &**first;
        };
        if name.len() < self.literal_bytes
            || !name.starts_with(&**first)
            || !name.ends_with(&**last)
        {
            return false;
        }
        // `literal_bytes >= first.len() + last.len()`, and both ends are char boundaries.
        let mut rest = &name[first.len()..name.len() - last.len()];
        for part in middle {
            if part.is_empty() {
                continue;
            }
            match rest.find(&**part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Globs in rank order (rank 0 wins), indexed so that a lookup only tries globs that can match:
/// a glob with a literal prefix can only match names starting with its first byte, one with
/// only a literal suffix names ending with its last byte. The rest (`*`, `*x*`) are always tried.
#[derive(Debug, Clone, Default)]
pub(crate) struct GlobIndex {
    /// By rank.
    globs: Vec<Glob>,
    /// 256 buckets by the first byte of the literal prefix: ranks, ascending. Empty when there
    /// are no globs.
    by_first: Vec<Vec<usize>>,
    /// 256 buckets by the last byte of the literal suffix, for globs without a prefix.
    by_last: Vec<Vec<usize>>,
    /// Globs with neither, ranks ascending.
    rest: Vec<usize>,
}

impl GlobIndex {
    /// Indexes globs given in rank order.
    pub(crate) fn new(globs: Vec<Glob>) -> Self {
        let mut index = Self::default();
        if globs.is_empty() {
            return index;
        }
        index.by_first = vec![Vec::new(); 256];
        index.by_last = vec![Vec::new(); 256];
        for (rank, glob) in globs.iter().enumerate() {
            let first = glob.parts.first().and_then(|p| p.as_bytes().first());
            let last = glob.parts.last().and_then(|p| p.as_bytes().last());
            match (first, last) {
                (Some(&b), _) => index.by_first[usize::from(b)].push(rank),
                (None, Some(&b)) => index.by_last[usize::from(b)].push(rank),
                (None, None) => index.rest.push(rank),
            }
        }
        index.globs = globs;
        index
    }

    /// The rank of the best glob matching `name`.
    pub(crate) fn find(&self, name: &str) -> Option<usize> {
        let bytes = name.as_bytes();
        let mut best = None;
        self.scan(bucket(&self.by_first, bytes.first()), name, &mut best);
        self.scan(bucket(&self.by_last, bytes.last()), name, &mut best);
        self.scan(&self.rest, name, &mut best);
        best
    }

    /// Tries `candidates` (ranks ascending) that would beat `best`; keeps the first match.
    fn scan(&self, candidates: &[usize], name: &str, best: &mut Option<usize>) {
        for &rank in candidates {
            if best.is_some_and(|best| rank >= best) {
                return;
            }
            if self.globs.get(rank).is_some_and(|glob| glob.matches(name)) {
                *best = Some(rank);
                return;
            }
        }
    }
}

fn bucket<'a>(buckets: &'a [Vec<usize>], byte: Option<&u8>) -> &'a [usize] {
    byte.and_then(|&b| buckets.get(usize::from(b)))
        .map_or(&[], Vec::as_slice)
}

/// Whether `pattern` contains a wildcard.
pub(crate) fn is_glob(pattern: &str) -> bool {
    pattern.contains('*')
}

/// Checks a tool name or glob (a key of `tools` or an entry of `hide`).
///
/// Names are matched literally, so a name that no MCP tool can have is a mistake: empty names,
/// whitespace and control characters are rejected, and so is `**` (a single `*` already matches
/// any run of characters; `**` usually means someone expected path semantics).
pub(crate) fn validate(pattern: &str) -> Result<(), String> {
    if pattern.is_empty() {
        return Err("tool name must not be empty".into());
    }
    if let Some(c) = pattern
        .chars()
        .find(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "invalid tool name or glob: it contains {:?}; tool names have no whitespace or control characters",
            c
        ));
    }
    if pattern.contains("**") {
        return Err(
            "invalid glob: `**` is not supported; a single `*` matches any run of characters"
                .into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        validate(pattern).unwrap();
        Glob::new(pattern).matches(name)
    }

    #[test]
    fn exact_names_match_only_themselves() {
        assert!(m("list_buckets", "list_buckets"));
        assert!(!m("list_buckets", "list_bucket"));
        assert!(!m("list_buckets", "list_buckets2"));
        assert!(!m("list_buckets", ""));
    }

    #[test]
    fn star_matches_any_run_including_empty() {
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("admin_*", "admin_"));
        assert!(m("admin_*", "admin_users"));
        assert!(!m("admin_*", "admin"));
        assert!(!m("admin_*", "xadmin_users"));
        assert!(m("*_admin", "super_admin"));
        assert!(!m("*_admin", "super_admins"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYc"));
        assert!(m("a*b*c", "abbbc"));
        assert!(!m("a*b*c", "acb"));
        assert!(m("*delete*", "bulk_delete_objects"));
        assert!(!m("*delete*", "bulk_remove"));
    }

    #[test]
    fn overlapping_prefix_and_suffix_need_enough_characters() {
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
        assert!(m("a*a", "aa"));
        assert!(!m("a*a", "a"));
    }

    #[test]
    fn multibyte_names_are_handled_on_char_boundaries() {
        assert!(m("é*", "été"));
        assert!(m("*é", "été"));
        assert!(!m("é*é", "é"));
        assert!(m("日*本", "日本"));
        assert_eq!(Glob::new("日*本").literal_chars(), 2);
    }

    #[test]
    fn literal_chars_counts_non_star_characters() {
        assert_eq!(Glob::new("*").literal_chars(), 0);
        assert_eq!(Glob::new("admin_*").literal_chars(), 6);
        assert_eq!(Glob::new("a*b*c").literal_chars(), 3);
    }

    #[test]
    fn the_index_finds_the_best_ranked_match() {
        let patterns = ["ab*", "*yz", "a*z", "*", "*b*", "x*"];
        let index = GlobIndex::new(patterns.iter().map(|p| Glob::new(p)).collect());
        assert_eq!(index.find("abxyz"), Some(0));
        assert_eq!(index.find("qqxyz"), Some(1));
        assert_eq!(index.find("aqz"), Some(2));
        assert_eq!(index.find("q"), Some(3));
        assert_eq!(index.find(""), Some(3));
        let index = GlobIndex::new(["*b*", "x*", "*x"].iter().map(|p| Glob::new(p)).collect());
        assert_eq!(index.find("xbx"), Some(0));
        assert_eq!(index.find("xax"), Some(1));
        assert_eq!(index.find("axa"), None);
        assert_eq!(index.find("aax"), Some(2));
        assert_eq!(index.find(""), None);
        assert_eq!(GlobIndex::default().find("a"), None);
    }

    /// A reference matcher: textbook dynamic programming over pattern and name.
    fn reference(pattern: &str, name: &str) -> bool {
        let p: Vec<char> = pattern.chars().collect();
        let n: Vec<char> = name.chars().collect();
        let mut row = vec![false; n.len() + 1];
        row[0] = true;
        for &pc in &p {
            let mut next = vec![false; n.len() + 1];
            if pc == '*' {
                next[0] = row[0];
                for j in 1..=n.len() {
                    next[j] = row[j] || next[j - 1];
                }
            } else {
                for j in 1..=n.len() {
                    next[j] = row[j - 1] && n[j - 1] == pc;
                }
            }
            row = next;
        }
        row[n.len()]
    }

    proptest::proptest! {
        #[test]
        fn matching_agrees_with_the_reference(pattern in "[ab*é]{0,6}", name in "[abé]{0,8}") {
            proptest::prop_assume!(validate(&pattern).is_ok());
            proptest::prop_assert_eq!(Glob::new(&pattern).matches(&name), reference(&pattern, &name));
        }

        #[test]
        fn the_index_agrees_with_a_linear_scan(
            patterns in proptest::collection::vec("[ab*]{1,4}", 0..8),
            name in "[ab]{0,5}",
        ) {
            let globs: Vec<Glob> = patterns
                .iter()
                .filter(|p| validate(p).is_ok())
                .map(|p| Glob::new(p))
                .collect();
            let linear = globs.iter().position(|g| g.matches(&name));
            proptest::prop_assert_eq!(GlobIndex::new(globs).find(&name), linear);
        }
    }

    #[test]
    fn invalid_patterns_are_rejected() {
        assert!(validate("").is_err());
        assert!(validate("a b").is_err());
        assert!(validate("a\tb").is_err());
        assert!(validate("a\u{0}b").is_err());
        assert!(validate("admin_**").is_err());
        assert!(validate("admin_*").is_ok());
        assert!(validate("*").is_ok());
        assert!(validate("ns/tool.name-1").is_ok());
        assert!(is_glob("a*"));
        assert!(!is_glob("a"));
    }
}
