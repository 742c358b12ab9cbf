//! `gen-assets OUT_DIR`: the manual pages and shell completions of the
//! Debian package, generated from the programs' own clap definitions
//! (`rxenstored::cli`, `snapshot_tools::cli`), so that they always describe the
//! command lines they ship with. `packaging/build-deb` runs it before
//! `cargo deb`; nothing it writes is kept in git.
//!
//! Writes, under OUT_DIR:
//! - `man/rxenstored.8`, `man/xenstore-inspect.1` (roff);
//! - `completions/{bash,zsh,fish}/…` for both programs, named as each
//!   shell's vendor directory expects (`NAME`, `_NAME`, `NAME.fish`).
//!
//! and prints the paths written, one per line.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap_complete::Shell;

/// The programs of the package and the manual section of each.
fn programs() -> [(clap::Command, &'static str); 2] {
    [(rxenstored::cli::command(), "8"), (snapshot_tools::cli::command(), "1")]
}

/// Where each shell's completion for `name` goes under `completions/`.
fn completion_file(shell: Shell, name: &str) -> PathBuf {
    match shell {
        Shell::Bash => Path::new("bash").join(name),
        Shell::Zsh => Path::new("zsh").join(format!("_{name}")),
        Shell::Fish => Path::new("fish").join(format!("{name}.fish")),
        other => Path::new(&other.to_string()).join(name),
    }
}

fn write(path: PathBuf, bytes: &[u8], written: &mut Vec<PathBuf>) -> io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&path, bytes).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    written.push(path);
    Ok(())
}

/// Generates every asset under `out`; returns the paths written.
fn generate(out: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (command, section) in programs() {
        let name = command.get_name().to_string();
        let mut page = Vec::new();
        clap_mangen::Man::new(command.clone()).section(section).render(&mut page)?;
        write(out.join("man").join(format!("{name}.{section}")), &page, &mut written)?;
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), &name, &mut script);
            write(out.join("completions").join(completion_file(shell, &name)), &script, &mut written)?;
        }
    }
    Ok(written)
}

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        eprintln!("usage: gen-assets OUT_DIR");
        return ExitCode::from(2);
    };
    match generate(Path::new(&out)) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gen-assets: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_come_from_the_clap_definitions() {
        let dir = tempfile::tempdir().expect("temp dir");
        let written = generate(dir.path()).expect("generated");
        assert_eq!(written.len(), 8, "{written:?}");
        let read = |p: &str| fs::read_to_string(dir.path().join(p)).expect(p);
        let page = read("man/rxenstored.8");
        assert!(page.contains(".TH rxenstored 8"), "{page}");
        // Options as the daemon's clap definitions have them.
        for option in ["pid\\-file", "no\\-fork", "quota\\-log\\-interval", "log\\-file"] {
            assert!(page.contains(option), "{option} in rxenstored(8)");
        }
        let page = read("man/xenstore-inspect.1");
        assert!(page.contains(".TH xenstore-inspect 1"), "{page}");
        assert!(page.contains("validate"), "the sub-commands are listed");
        assert!(read("completions/bash/rxenstored").contains("--pid-file"));
        assert!(read("completions/zsh/_xenstore-inspect").starts_with("#compdef xenstore-inspect"));
        assert!(read("completions/fish/rxenstored.fish").contains("-l no-fork"));
    }
}
