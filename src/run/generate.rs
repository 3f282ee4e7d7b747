//! Shell completions and man pages for both binaries, generated from their
//! clap definitions (docs/GUIDE.md "Shell completions and man pages"), the way
//! ripgrep does it: `harness --generate complete-bash` (or `complete-zsh`,
//! `complete-fish`, `man`) prints the script or the page and exits. Generated
//! from the same definitions that parse the command line, they cannot drift
//! from it.

use std::io::{self, Write};

/// What `--generate` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Generate {
    /// A bash completion script.
    CompleteBash,
    /// A zsh completion script.
    CompleteZsh,
    /// A fish completion script.
    CompleteFish,
    /// The man page (roff).
    Man,
}

/// Writes `what` for the command `cmd` (a binary's `Cli::command()`) to `out`.
pub fn write(what: Generate, mut cmd: clap::Command, out: &mut dyn Write) -> io::Result<()> {
    use clap_complete::Shell;
    let name = cmd.get_name().to_string();
    let shell = match what {
        Generate::CompleteBash => Shell::Bash,
        Generate::CompleteZsh => Shell::Zsh,
        Generate::CompleteFish => Shell::Fish,
        Generate::Man => return clap_mangen::Man::new(cmd).render(out),
    };
    clap_complete::generate(shell, &mut cmd, name, out);
    Ok(())
}
