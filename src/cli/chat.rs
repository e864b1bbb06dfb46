//! `switchyard chat`: an interactive session; the whole conversation goes through the template.

use std::io::{BufRead, Write};

use crate::tokenize::Message;
use clap::Args;

use super::ModelArgs;
use super::generate::SamplingArgs;

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// A system message for the whole session.
    #[arg(long)]
    system: Option<String>,
}

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let opts = a.sampling.options(None)?;
    let mut messages: Vec<Message> = a.system.iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    eprintln!(
        "Chatting with {}. Empty line or Ctrl-D to quit; /reset clears the history.",
        a.model.model.as_deref().unwrap_or("the default model")
    );
    loop {
        write!(out, "> ")?;
        out.flush()?;
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        let line = line.trim_end();
        if line == "/reset" {
            messages.retain(|m| m.role == "system");
            continue;
        }
        messages.push(Message::new("user", line));
        let prompt = engine.tokenizer.apply_chat_template(&messages, true)?;
        let ids = engine.tokenizer.encode(&prompt, false)?;
        let (gens, _) = engine.generate_batch(&[ids], &opts, |_, piece| {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        })?;
        writeln!(out)?;
        let reply = gens.into_iter().next().map(|g| g.text).unwrap_or_default();
        messages.push(Message::new("assistant", &reply));
    }
    Ok(())
}
