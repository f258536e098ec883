//! Subcommands other than serving.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use crate::auth::password;

/// `deepseek_proxy hash-password`: prompts twice without echo on a terminal,
/// or reads one line from stdin when piped, and prints the PHC string.
pub fn hash_password() -> ExitCode {
    match read_password().and_then(|p| password::hash(&p)) {
        Ok(phc) => {
            println!("{phc}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("deepseek_proxy hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
        let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
        if first != again {
            return Err("the passwords differ".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    };
    let _ = std::io::stderr().flush();
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    Ok(password)
}
