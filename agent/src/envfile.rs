//! Reads host env files (`KEY=VALUE` lines, `export` prefix, quotes, comments)
//! into the environment the app runs with. Values stay in memory on this host:
//! they are never logged, reported or written anywhere else.

use std::collections::BTreeMap;
use std::path::Path;

const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum EnvFileError {
    #[error("env file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("env file {path}: larger than 1 MiB")]
    TooLarge { path: String },
    #[error("env file {path} line {line}: {why}")]
    Syntax {
        path: String,
        line: usize,
        why: &'static str,
    },
}

/// Merges the files in order: a later file overrides an earlier one.
pub fn load_layers(files: &[impl AsRef<Path>]) -> Result<BTreeMap<String, String>, EnvFileError> {
    let mut vars = BTreeMap::new();
    for f in files {
        let path = f.as_ref();
        let shown = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| EnvFileError::Read {
            path: shown.clone(),
            source,
        })?;
        if meta.len() > MAX_ENV_FILE_BYTES {
            return Err(EnvFileError::TooLarge { path: shown });
        }
        let text = std::fs::read_to_string(path).map_err(|source| EnvFileError::Read {
            path: shown.clone(),
            source,
        })?;
        for (k, v) in parse(&text, &shown)? {
            vars.insert(k, v);
        }
    }
    Ok(vars)
}

/// Names defined in more than one layer, each as "NAME in a, b": one canonical
/// place per secret, so a duplicate is worth a warning. Names only, never values.
pub fn duplicates(files: &[impl AsRef<Path>]) -> Vec<String> {
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for f in files {
        let path = f.as_ref().display().to_string();
        let Ok(text) = std::fs::read_to_string(f.as_ref()) else {
            continue;
        };
        for (k, _) in parse(&text, &path).unwrap_or_default() {
            let files = seen.entry(k).or_default();
            if !files.contains(&path) {
                files.push(path.clone());
            }
        }
    }
    seen.into_iter()
        .filter(|(_, files)| files.len() > 1)
        .map(|(k, files)| format!("{k} in {}", files.join(", ")))
        .collect()
}

pub fn parse(text: &str, path: &str) -> Result<Vec<(String, String)>, EnvFileError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let err = |why| EnvFileError::Syntax {
            path: path.to_string(),
            line: i + 1,
            why,
        };
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err("expected KEY=VALUE"))?;
        let key = key.trim();
        if !artifact::spec::is_env_name(key) {
            return Err(err("invalid variable name"));
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            &value[1..value.len() - 1]
        } else {
            value
        };
        out.push((key.to_string(), value.to_string()));
    }
    Ok(out)
}

/// Replaces every occurrence of a secret value (4 bytes or longer, so `1` or
/// `on` do not mask half the text) with `***`.
pub fn redact<'a>(text: &str, secrets: impl Iterator<Item = &'a String>) -> String {
    let mut values: Vec<&String> = secrets.filter(|v| v.len() >= 4).collect();
    // Longest first, so a value containing another is masked whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for v in values {
        out = out.replace(v.as_str(), "***");
    }
    out
}

/// Masks a window cut out of a longer output: whole secret values as `redact`
/// does, and, when the window starts inside the output (`cut_before`), a
/// leading piece that ends a secret: the cut must never let part of one
/// through.
pub fn redact_window(text: &str, secrets: &[String], cut_before: bool) -> String {
    let out = redact(text, secrets.iter());
    if !cut_before {
        return out;
    }
    let mut longest = 0;
    for secret in secrets.iter().filter(|v| v.len() >= 4) {
        let piece = (1..secret.len())
            .rev()
            .filter(|k| secret.is_char_boundary(secret.len() - k))
            .find(|k| out.starts_with(&secret[secret.len() - k..]));
        longest = longest.max(piece.unwrap_or(0));
    }
    if longest == 0 {
        out
    } else {
        format!("***{}", &out[longest..])
    }
}

/// The last `max` characters of `text`, marked with "…" when cut. Cut only
/// what is masked already.
pub fn last_chars(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let start = text
        .char_indices()
        .nth(count - max)
        .map_or(text.len(), |(i, _)| i);
    format!("…{}", &text[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let text = "# db\nDATABASE_URL=postgres://x\nexport A='1 2'\nB=\"q\"\n\nEMPTY=\n";
        let v = parse(text, ".env").unwrap();
        assert_eq!(
            v,
            vec![
                ("DATABASE_URL".into(), "postgres://x".into()),
                ("A".into(), "1 2".into()),
                ("B".into(), "q".into()),
                ("EMPTY".into(), "".into())
            ]
        );
    }

    #[test]
    fn errors_name_file_and_line_but_never_the_value() {
        let e = parse("OK=1\nSECRET-KEY=hunter2\n", "/etc/app.env")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "env file /etc/app.env line 2: invalid variable name");
        assert!(!e.contains("hunter2"));
    }

    #[test]
    fn redacts_values_but_not_short_ones() {
        let secrets = ["postgres://u:pw@db/app".to_string(), "on".to_string()];
        let out = redact("connecting to postgres://u:pw@db/app: on", secrets.iter());
        assert_eq!(out, "connecting to ***: on");
    }

    #[test]
    fn duplicates_across_layers_are_named_without_values() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "X=secret-a\nY=1\n").unwrap();
        std::fs::write(d.path().join("b"), "X=secret-b\n").unwrap();
        let dups = duplicates(&[d.path().join("a"), d.path().join("b")]);
        assert_eq!(dups.len(), 1);
        assert!(
            dups[0].starts_with("X in ") && !dups[0].contains("secret"),
            "{dups:?}"
        );
    }

    #[test]
    fn later_layers_win() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "X=1\nY=1\n").unwrap();
        std::fs::write(d.path().join("b"), "X=2\n").unwrap();
        let v = load_layers(&[d.path().join("a"), d.path().join("b")]).unwrap();
        assert_eq!(v["X"], "2");
        assert_eq!(v["Y"], "1");
    }

    #[test]
    fn a_secret_cut_in_half_by_a_window_is_masked_too() {
        let secrets = vec![
            "postgres://u:TOPSECRET-4242@db/app".to_string(),
            "on".into(),
        ];
        // The window starts in the middle of the value.
        let window = "OPSECRET-4242@db/app000 then postgres://u:TOPSECRET-4242@db/app";
        let masked = redact_window(window, &secrets, true);
        assert_eq!(masked, "***000 then ***");
        // Not cut: the same leading text is not a fragment of anything.
        assert_eq!(redact_window("OPS on", &secrets, false), "OPS on");
        // Short values are never masked ("on" would mask half the text).
        assert_eq!(redact_window("on and on", &secrets, true), "on and on");
        assert_eq!(last_chars("abcdef", 3), "…def");
        assert_eq!(last_chars("abc", 3), "abc");
    }
}
