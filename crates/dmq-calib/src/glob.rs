//! Glob patterns over layer names: `*` matches any run of characters (dots included), `?`
//! one character; everything else literally. `*.time_emb_proj` and
//! `transformer_blocks.*.ff.net.*` are typical.

/// Whether `name` matches `pattern` (whole string).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    // Iterative wildcard matching with one backtrack point: O(|p|·|s|) worst case.
    let (mut pi, mut si) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn literal_star_and_question() {
        assert!(glob_match("conv_in", "conv_in"));
        assert!(!glob_match("conv_in", "conv_in2"));
        assert!(glob_match(
            "*.time_emb_proj",
            "down_blocks.0.resnets.0.time_emb_proj"
        ));
        assert!(!glob_match("*.time_emb_proj", "time_emb_proj_x"));
        assert!(glob_match(
            "transformer_blocks.*.ff.net.*",
            "transformer_blocks.3.ff.net.0.proj"
        ));
        assert!(!glob_match(
            "transformer_blocks.*.ff.net.*",
            "transformer_blocks.3.attn1.to_q"
        ));
        assert!(glob_match(
            "down_blocks.?.resnets.*",
            "down_blocks.1.resnets.0.conv1"
        ));
        assert!(!glob_match(
            "down_blocks.?.resnets.*",
            "down_blocks.10.resnets.0.conv1"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
    }
}
