//! Where the program of a command the agent starts (an app's process, a
//! hook, a command probe) is, found the way the child's `execvp` would
//! find it: a path with a slash is taken from the release dir, a bare name
//! is looked up in the child's own `PATH`.
//!
//! Looked up here rather than left to the child: with the environment
//! replaced and a bare name, the standard library must fork the whole agent
//! to let the child search; given a path, it starts the child with
//! `posix_spawn` (no copy of the agent's address space) whenever no user
//! switch is asked for.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `PATH` when the child's environment has none (glibc's default).
const DEFAULT_PATH: &str = "/bin:/usr/bin";

/// The file `argv0` names for a child started in `dir` with `PATH` set to
/// `path_var`: a path with a slash from `dir`; a bare name, the first
/// executable regular file of that name along the path (relative entries
/// from `dir`). Returned as it is — left to the child's `execvp` — when no
/// such file is found (starting it then fails with "not found", as it
/// would have) and when the file found is neither a `#!` script nor an ELF
/// binary (`execvp` runs such a file with `/bin/sh`; a spawn by path
/// would refuse it). Callers that switch user leave it to `execvp` too:
/// whether that user may run the file is for the kernel to say, and std
/// forks to switch users anyway.
pub fn resolve(argv0: &str, dir: &Path, path_var: Option<&str>) -> PathBuf {
    if argv0.contains('/') {
        return dir.join(argv0);
    }
    if argv0.is_empty() {
        return PathBuf::new();
    }
    path_var
        .unwrap_or(DEFAULT_PATH)
        .split(':')
        .map(|entry| match entry {
            // An empty entry is the working directory, as for execvp.
            "" => dir.to_path_buf(),
            e => dir.join(e),
        })
        .map(|d| d.join(argv0))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .filter(|p| starts_like_a_program(p))
        .unwrap_or_else(|| PathBuf::from(argv0))
}

/// Whether `path` begins with `#!` or the ELF magic.
fn starts_like_a_program(path: &Path) -> bool {
    let mut head = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
        .is_ok_and(|()| head.starts_with(b"#!") || head == *b"\x7fELF")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exe(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn a_name_is_looked_up_in_the_childs_path_in_order() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        exe(&b.join("tool"));
        std::fs::create_dir_all(&a).unwrap();
        // Not executable: skipped, as execvp skips it.
        std::fs::write(a.join("tool"), "").unwrap();
        let path = format!("{}:{}", a.display(), b.display());
        assert_eq!(resolve("tool", t.path(), Some(&path)), b.join("tool"));
        exe(&a.join("tool"));
        assert_eq!(resolve("tool", t.path(), Some(&path)), a.join("tool"));
    }

    #[test]
    fn relative_entries_and_paths_are_taken_from_the_dir() {
        let t = tempfile::tempdir().unwrap();
        exe(&t.path().join("bin/run"));
        assert_eq!(
            resolve("run", t.path(), Some("bin")),
            t.path().join("bin/run")
        );
        assert_eq!(
            resolve("./bin/run", t.path(), None),
            t.path().join("./bin/run")
        );
        assert_eq!(resolve("/bin/sh", t.path(), None), PathBuf::from("/bin/sh"));
    }

    #[test]
    fn a_script_without_an_interpreter_line_is_left_to_execvp() {
        let t = tempfile::tempdir().unwrap();
        let bin = t.path().join("bin");
        exe(&bin.join("tool"));
        std::fs::write(bin.join("tool"), "echo no interpreter line\n").unwrap();
        let path = bin.display().to_string();
        assert_eq!(
            resolve("tool", t.path(), Some(&path)),
            PathBuf::from("tool")
        );
    }

    #[test]
    fn without_path_the_default_is_searched_and_a_missing_name_is_kept() {
        let t = tempfile::tempdir().unwrap();
        assert!(resolve("sh", t.path(), None).is_absolute());
        assert_eq!(
            resolve("no-such-tool-here", t.path(), Some("/nonexistent")),
            PathBuf::from("no-such-tool-here")
        );
    }
}
