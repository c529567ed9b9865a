//! What the one-shot commands (`gc`, `migrate`, `import`, `user`, …) share: their async
//! runtime and their progress line.

use std::io::{IsTerminal, Write};

use anyhow::Context;

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// One line of progress, rewritten in place on a terminal, and nothing elsewhere (a log or a
/// pipe gets the summary only).
pub struct Progress {
    terminal: bool,
}

impl Progress {
    pub fn on_terminal() -> Progress {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn show(&self, line: std::fmt::Arguments) {
        if self.terminal {
            eprint!("\r{line}");
            let _ = std::io::stderr().flush();
        }
    }

    pub fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
