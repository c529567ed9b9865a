//! `berth htpasswd`: Apache's `htpasswd` for bcrypt, because the `registry:2` image no longer
//! ships it. Accepts the same flags the common recipes use (`-Bbn user pass`, `-c`, `-D`, `-v`,
//! `-i` for a password on stdin), and writes lines that Apache's `htpasswd -v` verifies.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context};
use berth_auth::htpasswd::{hash_password, DEFAULT_COST};
use berth_auth::HtpasswdFile;
use clap::Args;

#[derive(Args, Debug)]
#[command(disable_help_flag = true)]
pub struct HtpasswdArgs {
    /// Create the file (overwrite it if it exists).
    #[arg(short = 'c')]
    create: bool,
    /// Use bcrypt (the only kind Berth and registry:2 accept; always on).
    #[arg(short = 'B')]
    bcrypt: bool,
    /// Take the password from the command line.
    #[arg(short = 'b')]
    batch: bool,
    /// Print the line to stdout instead of updating a file.
    #[arg(short = 'n')]
    stdout: bool,
    /// Read the password from stdin.
    #[arg(short = 'i')]
    stdin: bool,
    /// Delete the user.
    #[arg(short = 'D')]
    delete: bool,
    /// Verify the password of the user.
    #[arg(short = 'v')]
    verify: bool,
    /// bcrypt cost (4-31).
    #[arg(short = 'C', default_value_t = DEFAULT_COST)]
    cost: u32,
    /// Print help.
    #[arg(long, action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// `[FILE] USER [PASSWORD]` — FILE is left out with -n, PASSWORD is given only with -b.
    #[arg(required = true, num_args = 1..=3)]
    args: Vec<String>,
}

/// One line from stdin, without its line ending: how every command takes a password, so none
/// ends up in shell history or the process list.
pub(crate) fn read_password() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from stdin")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn run(a: HtpasswdArgs) -> anyhow::Result<()> {
    let _ = a.bcrypt;
    if !(4..=31).contains(&a.cost) {
        bail!("the bcrypt cost must be between 4 and 31");
    }
    let mut args = a.args.clone().into_iter();
    let file = if a.stdout {
        None
    } else {
        Some(PathBuf::from(args.next().context("missing FILE")?))
    };
    let user = args.next().context("missing USER")?;
    let password = if a.delete {
        None
    } else if a.batch {
        Some(args.next().context("-b needs a PASSWORD argument")?)
    } else {
        Some(read_password()?)
    };
    if args.next().is_some() {
        bail!("too many arguments");
    }

    let Some(path) = file else {
        let password = password.context("-n cannot delete")?;
        println!("{user}:{}", hash_password(&user, &password, a.cost)?);
        return Ok(());
    };
    let mut htpasswd = if a.create || !path.exists() && !a.verify && !a.delete {
        if !a.create {
            bail!("{} does not exist; use -c to create it", path.display());
        }
        HtpasswdFile::default()
    } else {
        HtpasswdFile::load(&path)?
    };
    if a.verify {
        let password = password.context("-v needs a password")?;
        if htpasswd.verify(&user, &password) {
            eprintln!("Password for user {user} correct.");
            return Ok(());
        }
        bail!("password verification failed for user {user}");
    }
    if a.delete {
        if !htpasswd.remove(&user) {
            bail!("user {user} not found");
        }
        eprintln!("Deleting password for user {user}");
    } else {
        let password = password.context("missing password")?;
        htpasswd.set(&user, &password, a.cost)?;
        eprintln!("Adding password for user {user}");
    }
    write_atomically(&path, &htpasswd.render())
}

/// Replaces the file in one rename, so a server watching it never reads half a file.
fn write_atomically(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("htpasswd")
    ));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}
