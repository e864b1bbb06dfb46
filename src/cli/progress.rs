//! Progress as people see it: a bar on a terminal; off a terminal (a log, CI, a pipe), a plain
//! line every few seconds (`SWITCHYARD_PROGRESS_EVERY`, in seconds; default 5) and no escape
//! codes. The library reports through observers; this file draws them.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::eval::{EvalObserver, ResultRow};
use crate::providers::TargetSpec;
use crate::train::{Outcome, Plan, StepReport, TrainObserver};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Whether progress can be drawn as bars (stderr is a terminal).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Says when the next plain line is due: at the first call, then every few seconds.
struct Ticker {
    every: Duration,
    last: Option<Instant>,
}

impl Ticker {
    fn new() -> Self {
        let secs = std::env::var("SWITCHYARD_PROGRESS_EVERY")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| *s >= 0.0)
            .unwrap_or(5.0);
        Self {
            every: Duration::from_secs_f64(secs),
            last: None,
        }
    }

    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|l| now - l < self.every) {
            return false;
        }
        self.last = Some(now);
        true
    }
}

/// `1h02m`, `3m20s`, `12s`.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// A count of things done out of a total (tensors converted, for instance).
pub struct Counter {
    what: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    ticker: Ticker,
}

impl Counter {
    pub fn new(what: &str, unit: &'static str) -> Self {
        let bar = on_terminal().then(|| {
            let b = bar(0, "{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}");
            b.set_message(what.to_string());
            b
        });
        Self {
            what: what.to_string(),
            unit,
            bar,
            ticker: Ticker::new(),
        }
    }

    pub fn update(&mut self, i: usize, n: usize) {
        match &self.bar {
            Some(b) => {
                b.set_length(n as u64);
                b.set_position(i as u64);
            }
            None if self.ticker.due() || i == n => {
                eprintln!("{}: {i}/{n} {}", self.what, self.unit);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Training: a bar with loss, validation loss and tokens/s; or a line per few seconds.
pub struct TrainProgress {
    bar: Option<ProgressBar>,
    ticker: Ticker,
}

impl TrainProgress {
    pub fn new() -> Self {
        Self {
            bar: None,
            ticker: Ticker::new(),
        }
    }
}

impl TrainObserver for TrainProgress {
    fn started(&mut self, plan: &Plan, at_step: usize, resumed: Option<&Path>) {
        if let Some(dir) = resumed {
            eprintln!(
                "resuming from {} (step {at_step}/{})",
                dir.display(),
                plan.total_steps
            );
        }
        if on_terminal() {
            let b = bar(
                plan.total_steps as u64,
                "train [{bar:30}] {pos}/{len} steps · {msg} · {elapsed} elapsed, eta {eta}",
            );
            b.set_position(at_step as u64);
            self.bar = Some(b);
        }
    }

    fn step(&mut self, r: &StepReport) {
        let val = r
            .last_val_loss
            .map(|v| format!(" · val {v:.4}"))
            .unwrap_or_default();
        match &self.bar {
            Some(b) => {
                b.set_message(format!(
                    "loss {:.4}{val} · {:.0} tok/s",
                    r.loss, r.tokens_per_s
                ));
                b.set_position(r.step as u64);
            }
            None if self.ticker.due() || r.step == r.total_steps => eprintln!(
                "train step {}/{} · loss {:.4}{val} · {:.0} tok/s · {} elapsed, eta {}",
                r.step,
                r.total_steps,
                r.loss,
                r.tokens_per_s,
                duration(r.elapsed_s),
                duration(r.eta_s())
            ),
            None => {}
        }
    }

    fn finished(&mut self, _outcome: &Outcome) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// An eval: a bar per target; or a line per few seconds with every target's count.
pub struct EvalProgress {
    multi: Option<MultiProgress>,
    bars: BTreeMap<String, ProgressBar>,
    /// Per target: rows done, rows in the run, errors.
    counts: BTreeMap<String, (usize, usize, usize)>,
    resumed: usize,
    started: Instant,
    ticker: Ticker,
}

impl EvalProgress {
    pub fn new() -> Self {
        Self {
            multi: on_terminal()
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            bars: BTreeMap::new(),
            counts: BTreeMap::new(),
            resumed: 0,
            started: Instant::now(),
            ticker: Ticker::new(),
        }
    }

    fn line(&self) -> String {
        let (done, total, errors) = self
            .counts
            .values()
            .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
        let fresh = done - self.resumed;
        let rate = fresh as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let eta = if rate > 0.0 {
            duration((total - done) as f64 / rate)
        } else {
            "?".into()
        };
        let per: Vec<String> = self
            .counts
            .iter()
            .map(|(t, (d, n, _))| format!("{t} {d}/{n}"))
            .collect();
        format!(
            "eval {done}/{total} rows · {errors} errors · {rate:.2} rows/s · eta {eta} · {}",
            per.join(", ")
        )
    }
}

impl EvalObserver for EvalProgress {
    fn planned(&mut self, target: &str, rows: usize, done: usize) {
        if self.counts.is_empty() {
            // The clock of the rate starts with the eval (a pipeline makes this before training).
            self.started = Instant::now();
        }
        self.counts.insert(target.to_string(), (done, rows, 0));
        self.resumed += done;
        if let Some(m) = &self.multi {
            let b = m.add(bar(
                rows as u64,
                "{prefix:>16} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}",
            ));
            b.set_prefix(target.chars().take(16).collect::<String>());
            b.set_position(done as u64);
            b.reset_eta();
            self.bars.insert(target.to_string(), b);
        }
    }

    fn row(&mut self, row: &ResultRow) {
        let Some(c) = self.counts.get_mut(&row.target) else {
            return;
        };
        c.0 += 1;
        c.2 += row.error.is_some() as usize;
        let (done, total, errors) = *c;
        match self.bars.get(&row.target) {
            Some(b) => {
                b.inc(1);
                if errors > 0 {
                    b.set_message(format!("{errors} errors"));
                }
            }
            None if self.ticker.due() || done == total => eprintln!("{}", self.line()),
            None => {}
        }
    }

    fn finished(&mut self) {
        for b in self.bars.values() {
            b.finish();
        }
        if let Some(m) = &self.multi {
            let _ = m.clear();
        }
    }
}

/// A target in words: the local model and its adapter, or the provider and model.
pub fn describe(t: &TargetSpec) -> String {
    match t.provider.as_str() {
        "local" => format!(
            "local model {}{}",
            t.model
                .as_deref()
                .unwrap_or("SmolLM2-135M-Instruct (default)"),
            t.adapter
                .as_deref()
                .map(|p| format!(" + adapter {}", p.display()))
                .unwrap_or_default()
        ),
        p => format!("{p} · {}", t.model.as_deref().unwrap_or("?")),
    }
}
