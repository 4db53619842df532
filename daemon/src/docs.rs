//! Man pages and shell completions, generated from each binary's own clap
//! definition so they never drift from `--help`: what the packages ship
//! (`packaging/build-debs.sh`) and what `slipctl completions` prints.

use std::io::Write;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Doc {
    /// The man page (roff).
    Man,
    Bash,
    Zsh,
    Fish,
}

/// Writes `doc` for the command `cmd` (its name is the binary's) to `out`;
/// a man page goes in `section` (1: user commands, 8: daemons) and covers
/// the command and, on one page, its subcommands.
pub fn generate(
    mut cmd: clap::Command,
    doc: Doc,
    section: u8,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    // Into a buffer first: clap_complete panics on a failed write.
    let mut buf = Vec::new();
    let shell = match doc {
        Doc::Man => {
            cmd.build();
            man(&cmd, section, &mut buf)?;
            return out.write_all(&buf);
        }
        Doc::Bash => clap_complete::Shell::Bash,
        Doc::Zsh => clap_complete::Shell::Zsh,
        Doc::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut cmd, name, &mut buf);
    out.write_all(&buf)
}

/// [`generate`] to stdout; a reader that went away (`| head`) is not an
/// error.
pub fn print(cmd: clap::Command, doc: Doc, section: u8) -> std::io::Result<()> {
    match generate(cmd, doc, section, &mut std::io::stdout().lock()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn man(cmd: &clap::Command, section: u8, out: &mut dyn Write) -> std::io::Result<()> {
    let page = clap_mangen::Man::new(cmd.clone()).section(section.to_string());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
        .collect();
    if !subs.is_empty() {
        writeln!(out, ".SH COMMANDS")?;
        for sub in subs {
            let usage = sub.clone().render_usage().to_string();
            let usage = usage.trim_start_matches("Usage: ");
            writeln!(
                out,
                ".TP\n\\fB{}\\fR",
                roff_escape(&format!("{} {}", cmd.get_name(), usage))
            )?;
            if let Some(about) = sub.get_long_about().or(sub.get_about()) {
                writeln!(out, "{}", roff_escape(&about.to_string()))?;
            }
        }
    }
    if cmd.get_version().is_some() {
        page.render_version_section(out)?;
    }
    Ok(())
}

/// Text made safe for roff: backslashes doubled, a leading dot or quote
/// escaped on each line.
fn roff_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("tool")
            .about("Does things")
            .arg(clap::Arg::new("verbose").long("verbose").help("Say more"))
            .subcommand(clap::Command::new("run").about(".starts with a dot"))
            .subcommand(clap::Command::new("secret").hide(true))
    }

    #[test]
    fn the_man_page_lists_visible_subcommands_and_escapes_roff() {
        let mut out = Vec::new();
        generate(cli(), Doc::Man, 8, &mut out).unwrap();
        let page = String::from_utf8(out).unwrap();
        assert!(
            page.starts_with(".ie") || page.contains(".TH tool"),
            "{page}"
        );
        assert!(page.contains("\\-\\-verbose"), "{page}");
        assert!(page.contains("tool run"), "{page}");
        assert!(page.contains("\\&.starts with a dot"), "{page}");
        assert!(!page.contains("secret"), "{page}");
    }

    #[test]
    fn completions_name_the_binary_and_its_subcommands() {
        for (doc, marker) in [
            (Doc::Bash, "_tool()"),
            (Doc::Zsh, "#compdef tool"),
            (Doc::Fish, "complete -c tool"),
        ] {
            let mut out = Vec::new();
            generate(cli(), doc, 1, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains(marker), "{doc:?}: {text}");
            assert!(text.contains("run"), "{doc:?}: {text}");
        }
    }
}
