//! LoRA training from the CLI: recipes, data, resumption, outputs. The tiny Llama fixture stands
//! in for the model (what is tested is the training machinery; its tokenizer renders SmolLM2's
//! chat template), so these run in seconds.

use std::path::Path;

use crate::common::{cli_ok, in_dir};
use serde_json::Value;
use switchyard::train::{self, LoadedRecipe, StepReport, TrainObserver, TrainOptions};
use switchyard::util::Interrupt;

/// The `switchyard` binary, working in `dir`.
fn cli(dir: &Path) -> std::process::Command {
    in_dir(dir)
}

/// A small chat dataset, the tiny model and a recipe around them, in `dir`.
fn setup(dir: &Path, extra: &str) -> std::path::PathBuf {
    let model = crate::common::tiny_model("llama3", dir);
    let mut rows = String::new();
    for i in 0..24 {
        let words = ["river", "stone", "apple", "quiet", "lamp", "cloud"];
        let a = words[i % 6];
        let b = words[(i * 5 + 1) % 6];
        rows.push_str(
            &serde_json::json!({"messages": [
                {"role": "user", "content": format!("Reverse: {a}, {b}")},
                {"role": "assistant", "content": format!("{b}, {a}")}
            ]})
            .to_string(),
        );
        rows.push('\n');
    }
    std::fs::write(dir.join("data.jsonl"), rows).unwrap();
    let recipe = dir.join("recipe.toml");
    std::fs::write(
        &recipe,
        format!(
            "output_dir = \"{}\"\nlora_r = 4\nlora_alpha = 8\nlora_dropout = 0.1\nmicro_batch_size = 2\ngradient_accumulation_steps = 2\nmax_steps = 4\nlearning_rate = 2e-3\nwarmup_steps = 1\nval_set_size = 4\neval_steps = 2\nsave_steps = 1\nsave_total_limit = 2\nsequence_len = 256\n{extra}\nbase_model = \"{}\"\n[[datasets]]\npath = \"data.jsonl\"\ntype = \"chat\"\n",
            dir.join("out").display(),
            model.display()
        ),
    )
    .unwrap();
    recipe
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("out/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Stops the run after a given step, as Ctrl-C would.
struct StopAfter(usize, Interrupt);

impl TrainObserver for StopAfter {
    fn step(&mut self, r: &StepReport) {
        if r.step == self.0 {
            self.1.trigger();
        }
    }
}

#[test]
fn an_interrupted_run_resumes_to_the_same_losses_and_writes_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path(), "sample_packing = true");
    let out = crate::common::run(cli(dir.path()).args(["train"]).arg(&recipe));
    assert!(out.ok, "{}", out.stderr);
    // Off a terminal, progress is plain lines: the last step at least, with its loss and rate.
    assert!(
        out.stderr.contains("train step 4/4 · loss "),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\x1b'), "{:?}", out.stderr);
    let full = metrics(dir.path());
    assert_eq!(full.len(), 4);
    let first = full[0]["loss"].as_f64().unwrap();
    let last = full[3]["loss"].as_f64().unwrap();
    assert!(last < first, "loss should fall: {first} -> {last}");
    assert!(full[1]["val_loss"].is_f64() && full[3]["val_ppl"].is_f64());
    for key in ["step", "loss", "lr", "tokens_per_s"] {
        assert!(full[0].get(key).is_some(), "metrics lack {key}");
    }

    // A second run must not silently overwrite the first.
    let out = cli(dir.path())
        .args(["train"])
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--resume"));

    // Stop after step 2 as Ctrl-C would (the loop's interrupt, set by an observer), then resume.
    let prepared = train::prepare(LoadedRecipe::load(&recipe).unwrap()).unwrap();
    let interrupt = Interrupt::new();
    let opts = TrainOptions {
        resume: false,
        overwrite: true,
    };
    let mut stop = StopAfter(2, interrupt.clone());
    let outcome = train::train(
        &prepared,
        &crate::common::cpu(),
        &opts,
        &interrupt,
        &mut stop,
    )
    .unwrap();
    assert!(outcome.interrupted && outcome.steps == 2, "{outcome:?}");
    assert!(outcome.checkpoint.is_some() && outcome.adapter_dir.is_none());
    assert!(!dir.path().join("out/adapter").exists());
    cli_ok(cli(dir.path()).args(["train", "--resume"]).arg(&recipe));
    let resumed = metrics(dir.path());
    assert_eq!(resumed.len(), 4);
    for (a, b) in full.iter().zip(&resumed) {
        assert_eq!(a["loss"], b["loss"], "step {}", a["step"]);
        assert_eq!(a.get("val_loss"), b.get("val_loss"));
    }
    // Retention: two checkpoints kept.
    let cks = std::fs::read_dir(dir.path().join("out/checkpoints"))
        .unwrap()
        .count();
    assert_eq!(cks, 2);

    // The adapter is in PEFT's layout, with the tokenizer and template beside it.
    let ad = dir.path().join("out/adapter");
    for f in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        assert!(ad.join(f).is_file(), "{f} missing");
    }
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(ad.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    let bytes = std::fs::read(ad.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let a = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    let b = st
        .tensor("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight")
        .unwrap();
    // The tiny model: hidden 64, 2 KV heads of 16, 2 layers; q_proj and v_proj adapted.
    assert_eq!(a.shape(), &[4, 64]);
    assert_eq!(b.shape(), &[32, 4]);
    assert_eq!(st.names().len(), 2 * 2 * 2);
}

#[test]
fn data_preview_marks_only_the_assistant_answer_as_trained() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path(), "");
    let out = cli_ok(
        cli(dir.path())
            .args(["data", "preview", "-n", "1"])
            .arg(&recipe),
    );
    assert!(
        out.contains("<|im_start|>assistant\n⟦stone, river<|im_end|>⟧"),
        "{out}"
    );
    assert_eq!(out.matches('⟦').count(), 1, "{out}");
    let all = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("sequence_len", "train_on_inputs = true\nsequence_len");
    std::fs::write(&recipe, all).unwrap();
    let out = cli_ok(
        cli(dir.path())
            .args(["data", "preview", "-n", "1"])
            .arg(&recipe),
    );
    assert!(
        out.starts_with("==") && out.contains("⟦<|im_start|>system"),
        "{out}"
    );
}

#[test]
fn a_dry_run_prints_the_plan_without_training() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path(), "lora_target_modules = \"all-linear\"");
    let out = cli_ok(cli(dir.path()).args(["train", "--dry-run"]).arg(&recipe));
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["total_steps"], 4);
    // Every projection of the tiny model's 2 layers (7 each).
    assert_eq!(plan["adapted_modules"], 14);
    assert_eq!(plan["train"]["samples"], 20);
    assert!(!dir.path().join("out/metrics.jsonl").exists());
}

#[test]
fn bad_recipes_and_rows_name_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path(), "lora_rank = 4");
    let err = |recipe: &Path| {
        let out = cli(dir.path())
            .args(["train", "--dry-run"])
            .arg(recipe)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = err(&recipe);
    assert!(
        e.contains("recipe.toml") && e.contains("lora_rank") && e.contains("line 15"),
        "{e}"
    );

    let recipe = setup(dir.path(), "learning_rate_typo = 1");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("learning_rate_typo = 1\n", "")
        .replace("lora_dropout = 0.1", "lora_dropout = 2.0");
    std::fs::write(&recipe, text).unwrap();
    let e = err(&recipe);
    assert!(e.contains("recipe.toml:4: `lora_dropout`"), "{e}");

    let recipe = setup(dir.path(), "");
    let mut data = std::fs::read_to_string(dir.path().join("data.jsonl")).unwrap();
    data.push_str("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
    std::fs::write(dir.path().join("data.jsonl"), &data).unwrap();
    let e = err(&recipe);
    assert!(
        e.contains("data.jsonl:25") && e.contains("no assistant turn"),
        "{e}"
    );
    data.push_str("{not json\n");
    std::fs::write(dir.path().join("data.jsonl"), &data).unwrap();
    let e = err(&recipe);
    assert!(
        e.contains("data.jsonl:26") && e.contains("not valid JSON"),
        "{e}"
    );
}

/// The same rows as CSV (Alpaca columns), Parquet (prompt/completion), JSON (an array) and text.
#[test]
fn every_file_format_and_row_format_renders_through_the_template() {
    use polars::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("alpaca.csv"),
        "instruction,input,output\nReverse the words,\"red, blue\",\"blue, red\"\nSay hi,,hi\n",
    )
    .unwrap();
    let mut df = df!(
        "question" => ["2 + 2?", "3 + 3?"],
        "answer" => ["4", "6"],
    )
    .unwrap();
    let f = std::fs::File::create(d.join("pc.parquet")).unwrap();
    ParquetWriter::new(f).finish(&mut df).unwrap();
    std::fs::write(d.join("text.json"), r#"[{"text": "Once upon a time."}]"#).unwrap();
    let recipe = d.join("r.toml");
    std::fs::write(
        &recipe,
        "output_dir = \"out\"\nbase_model = \"llama3\"\n\
         [[datasets]]\npath = \"alpaca.csv\"\ntype = \"alpaca\"\n\
         [[datasets]]\npath = \"pc.parquet\"\ntype = \"prompt_completion\"\nfield_prompt = \"question\"\nfield_completion = \"answer\"\n\
         [[datasets]]\npath = \"text.json\"\ntype = \"text\"\n",
    )
    .unwrap();
    let model = crate::common::tiny_model("llama3", d);
    let out = cli_ok(cli(d).args(["data", "preview", "-n", "2"]).arg(&recipe));
    assert!(
        out.contains("Reverse the words\n\nred, blue<|im_end|>"),
        "{out}"
    );
    assert!(out.contains("assistant\n⟦blue, red<|im_end|>⟧"), "{out}");
    assert!(
        out.contains("-- line 3:"),
        "CSV rows are numbered by line: {out}"
    );
    assert!(
        out.contains("user\n3 + 3?<|im_end|>") && out.contains("⟦6<|im_end|>⟧"),
        "{out}"
    );
    assert!(out.contains("⟦Once upon a time.<|im_end|>⟧"), "{out}");

    // A Parquet row with a null completion is reported by row.
    let mut df = df!("question" => ["a?", "b?"], "answer" => [Some("x"), None::<&str>]).unwrap();
    let f = std::fs::File::create(d.join("pc.parquet")).unwrap();
    ParquetWriter::new(f).finish(&mut df).unwrap();
    assert!(model.is_dir());
    let o = cli(d)
        .args(["data", "preview"])
        .arg(&recipe)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("pc.parquet:2") && e.contains("missing `answer`"),
        "{e}"
    );
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_says_how_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path(), "");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("max_steps = 4", "max_steps = 1000000")
        .replace("save_steps = 1", "save_steps = 10000000");
    std::fs::write(&recipe, text).unwrap();
    let child = cli(dir.path())
        .args(["train"])
        .arg(&recipe)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = dir.path().join("out/metrics.jsonl");
    let started = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |t| t.lines().count() < 1) {
        assert!(
            started.elapsed().as_secs() < 120,
            "training never logged a step"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The shell's own `kill` (a fresh Debian may lack procps' /bin/kill).
    let kill = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {}", child.id())])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    let cks: Vec<_> = std::fs::read_dir(dir.path().join("out/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cks.len(), 1, "{cks:?}");
    assert!(cks[0].to_string_lossy().starts_with("step-"));
}

/// The training loss is the log-likelihood the parity-tested inference path gives.
#[test]
fn the_training_loss_is_the_models_negative_log_likelihood() {
    use burn::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let folder = crate::common::tiny_model("llama3", dir.path());
    let files = switchyard::load::files::open_folder(&folder, "tiny").unwrap();
    let engine = switchyard::generate::Engine::load(files, &crate::common::cpu()).unwrap();
    let ids = engine
        .tokenizer
        .encode(
            "The capital of France is Paris, and the capital of Italy is Rome.",
            false,
        )
        .unwrap();
    let n = ids.len();
    let sample = switchyard::data::Sample {
        ids: ids.clone(),
        trained: vec![true; n],
    };
    let seq = vec![sample];
    let hb = switchyard::data::HostBatch::new(&[&seq], 0, None);
    let dev = crate::common::cpu();
    let batch = switchyard::model::Batch {
        tokens: Tensor::from_data(TensorData::new(hb.ids.clone(), [1, n]), &dev),
        positions: Tensor::from_data(TensorData::new(hb.positions.clone(), [1, n]), &dev),
        mask: Tensor::from_data(TensorData::new(hb.mask.clone(), [1, 1, n, n]), &dev),
    };
    let at = Tensor::from_data(TensorData::new(hb.predict_at.clone(), [n - 1]), &dev);
    let labels = Tensor::from_data(TensorData::new(hb.labels.clone(), [n - 1]), &dev);
    let nll: f32 = engine.model.nll_sum(batch, at, labels).into_scalar();
    let logprobs = engine.next_token_logprobs(&ids, n);
    let want: f32 = (0..n - 1).map(|t| -logprobs[t][ids[t + 1] as usize]).sum();
    assert!((nll - want).abs() < 1e-3 * want.abs(), "{nll} vs {want}");
}

/// Early stopping stops at the first evaluation that is not better than the best one before it
/// (patience 1), and not before. A reckless learning rate makes such an evaluation come soon.
#[test]
fn early_stopping_stops_at_the_first_evaluation_without_improvement() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = setup(dir.path(), "early_stopping_patience = 1");
    let text = std::fs::read_to_string(&recipe)
        .unwrap()
        .replace("max_steps = 4", "max_steps = 8")
        .replace("eval_steps = 2", "eval_steps = 1")
        .replace(
            "learning_rate = 2e-3",
            "learning_rate = 0.5\nlr_scheduler = \"constant\"",
        );
    std::fs::write(&recipe, text).unwrap();
    cli_ok(cli(dir.path()).args(["train"]).arg(&recipe));
    let vals: Vec<f64> = metrics(dir.path())
        .iter()
        .map(|m| m["val_loss"].as_f64().unwrap())
        .collect();
    let stop = (1..vals.len())
        .find(|&i| vals[i] >= vals[..i].iter().cloned().fold(f64::INFINITY, f64::min));
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    let stopped = summary["outcome"]["early_stopped"].as_bool().unwrap();
    match stop {
        Some(i) => {
            assert!(stopped, "{vals:?}");
            assert_eq!(
                vals.len(),
                i + 1,
                "should stop right after evaluation {}: {vals:?}",
                i + 1
            );
        }
        None => assert!(!stopped && vals.len() == 8, "{vals:?}"),
    }
    assert!(
        stop.is_some(),
        "lr 0.5 should make some evaluation worse: {vals:?}"
    );
}
