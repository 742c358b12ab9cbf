//! The `xenstore-inspect` command line, apart from the binary so that its
//! manual page and shell completions are generated from the same
//! definitions (the `packaging` crate, when the Debian package is built).

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::cver::CVersion;

/// The `xenstore-inspect` command, as its manual page and completions see it.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Inspect xenstore live-update state files (migration streams), oxenstored
/// dumps and rxenstored checkpoints.
#[derive(Debug, Parser)]
#[command(name = "xenstore-inspect", version)]
pub struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The inspector's sub-commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Parse report and answers: domains, connections, pending data, watches, quotas.
    Summary { file: PathBuf },
    /// The node tree like `xenstore-ls -p` (values escaped).
    Tree { file: PathBuf, path: Option<String> },
    /// One node: value and permissions.
    Get { file: PathBuf, path: String },
    /// Every record with its offset and decode.
    Records {
        file: PathBuf,
        /// Hex dump of each record too.
        #[arg(long)]
        hex: bool,
    },
    /// Malformed-record checks, and whether a C version would restore the file.
    Validate {
        file: PathBuf,
        /// C release whose reader rules to apply: 4.17, 4.21 or 4.22.
        #[arg(long = "as-c", value_name = "VERSION")]
        as_c: Option<CVersion>,
    },
    /// Tree, connection, watch and domain differences between two files.
    Diff { file_a: PathBuf, file_b: PathBuf },
    /// Write a file as a migration stream of the given version (from a
    /// stream, an oxenstored dump or an rxenstored checkpoint). A stream
    /// converted to its own version is reproduced byte for byte.
    Convert {
        /// Stream version to write.
        #[arg(long = "to", value_enum)]
        to: StreamVersion,
        input: PathBuf,
        output: PathBuf,
    },
}

/// `convert --to`: stream versions we write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamVersion {
    /// Version 1, as Xen 4.17 writes it (special nodes before the tree).
    V1,
    /// Version 2, as Xen HEAD writes it.
    V2,
}

impl StreamVersion {
    pub fn number(self) -> u32 {
        match self {
            StreamVersion::V1 => 1,
            StreamVersion::V2 => 2,
        }
    }
}
