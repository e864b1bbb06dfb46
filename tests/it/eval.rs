//! `switchyard eval` on the real model: scoring, reasons, intervals, Parquet results, bad suites.

use crate::common::{cli, cli_ok};

fn read_rows(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_suite_scores_the_local_model_and_writes_results() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("cases.csv"),
        "country,capital\nFrance,Paris\nFrance,Lyon\n",
    )
    .unwrap();
    std::fs::write(
        d.join("suite.toml"),
        "name = \"capitals\"\ndataset = \"cases.csv\"\nuser = \"What is the capital of {{ country }}?\"\nreference = \"capital\"\n\
         [generation]\nmax_tokens = 16\n[[scorers]]\ntype = \"contains\"\n",
    )
    .unwrap();
    let out = d.join("out");
    let cache = d.join("cache");
    let run = || {
        let mut c = cli();
        c.args(["eval"])
            .arg(d.join("suite.toml"))
            .arg("--out")
            .arg(&out)
            .arg("--cache-dir")
            .arg(&cache);
        c
    };
    let text = cli_ok(&mut run());
    assert!(
        text.contains("2 rows (0 resumed) · 2 requests sent"),
        "{text}"
    );
    let summary: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let all = summary.iter().find(|s| s["tag"] == "all").unwrap();
    assert_eq!(all["target"], "local");
    assert_eq!(all["mean_score"], 0.5);
    assert_eq!(all["ci_method"], "wilson");
    assert!(all["ci_low"].as_f64().unwrap() < 0.5 && all["ci_high"].as_f64().unwrap() > 0.5);
    assert!(all["latency_p50_s"].as_f64().unwrap() > 0.0);
    let rows = read_rows(&out.join("results.jsonl"));
    assert_eq!(rows[0]["output"], "The capital of France is Paris.");
    assert_eq!(rows[0]["pass"], true);
    assert!(rows[0]["ttft_s"].as_f64().unwrap() <= rows[0]["latency_s"].as_f64().unwrap());
    assert_eq!(rows[1]["pass"], false);
    assert!(
        rows[1]["reason"].as_str().unwrap().contains("Lyon"),
        "{}",
        rows[1]
    );
    let f = std::fs::File::open(out.join("results.parquet")).unwrap();
    use polars::prelude::*;
    let df = ParquetReader::new(f).finish().unwrap();
    assert_eq!(df.height(), 2);
    assert_eq!(
        df.column("pass").unwrap().bool().unwrap().get(0),
        Some(true)
    );
    // Again: everything is resumed. From scratch: the cache answers, the model is not asked.
    let text = cli_ok(&mut run());
    assert!(
        text.contains("2 rows (2 resumed) · 0 requests sent"),
        "{text}"
    );
    let text = cli_ok(run().arg("--fresh"));
    assert!(text.contains("0 requests sent · 2 from cache"), "{text}");
}

/// The shipped suites load, and each scores the real model with its own scorer.
#[test]
fn shipped_suites_run_on_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.path().join("out");
    let text = cli_ok(
        cli()
            .current_dir(root)
            .args([
                "eval",
                "evals/mmlu.toml",
                "evals/arithmetic.toml",
                "evals/structured.toml",
                "evals/word-reversal.toml",
            ])
            .args(["--limit", "3", "--no-cache", "--out"])
            .arg(&out),
    );
    assert!(text.contains("12 rows"), "{text}");
    let rows = read_rows(&out.join("results.jsonl"));
    fn by_suite<'a>(
        rows: &'a [serde_json::Value],
        s: &'a str,
    ) -> impl Iterator<Item = &'a serde_json::Value> {
        rows.iter().filter(move |r| r["suite"] == s)
    }
    for r in by_suite(&rows, "mmlu") {
        assert!(
            r["verdicts"].as_str().unwrap().contains("\"choice\""),
            "{r}"
        );
        assert!(r["tags"].as_str().unwrap().starts_with("mmlu,"), "{r}");
        // Two examples from the same subject come first, as earlier turns.
        let prompt: Vec<serde_json::Value> =
            serde_json::from_str(r["prompt"].as_str().unwrap()).unwrap();
        assert_eq!(prompt.len(), 1 + 2 * 2 + 1, "{r}");
    }
    for r in by_suite(&rows, "structured") {
        assert!(
            r["verdicts"].as_str().unwrap().contains("json_schema"),
            "{r}"
        );
    }
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    for tag in [
        "mmlu",
        "high_school_geography",
        "arithmetic",
        "structured_output",
        "word_reversal",
    ] {
        assert!(summary.contains(tag), "{tag}: {summary}");
    }
}

/// `response_format` in a suite reaches the local model as constrained decoding: with the
/// schema, every answer is JSON that validates; the same cases without it are mostly not JSON.
#[test]
fn a_response_format_is_enforced_on_the_local_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.path().join("out");
    cli_ok(
        cli()
            .current_dir(root)
            .args([
                "eval",
                "evals/structured.toml",
                "evals/structured-schema.toml",
            ])
            .args(["--limit", "8", "--no-cache", "--out"])
            .arg(&out),
    );
    let rows = read_rows(&out.join("results.jsonl"));
    let verdict = |r: &serde_json::Value, scorer: &str| -> f64 {
        let v: Vec<serde_json::Value> =
            serde_json::from_str(r["verdicts"].as_str().unwrap()).unwrap();
        v.iter().find(|x| x["scorer"] == scorer).unwrap()["score"]
            .as_f64()
            .unwrap()
    };
    let (mut free_json, mut n) = (0.0, 0);
    for r in &rows {
        if r["suite"] == "structured-schema" {
            n += 1;
            let doc: serde_json::Value = serde_json::from_str(r["output"].as_str().unwrap())
                .unwrap_or_else(|e| panic!("{e}: {r}"));
            assert!(doc["count"].as_i64().unwrap() >= 1, "{r}");
            assert!(!doc["first"].as_str().unwrap().is_empty(), "{r}");
            assert_eq!(doc.as_object().unwrap().len(), 2, "{r}");
            assert_eq!(verdict(r, "json_schema"), 1.0, "{r}");
        } else {
            free_json += verdict(r, "json");
        }
    }
    assert_eq!(n, 8);
    assert!(free_json < 4.0, "unconstrained, {free_json} of 8 were JSON");
}

#[test]
fn a_suite_with_an_unknown_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.toml");
    std::fs::write(&p, "name = \"x\"\ndataset = \"d.jsonl\"\nmessages = \"messages\"\nreference = \"a\"\nscorer = \"exact\"\n").unwrap();
    let o = cli().args(["eval"]).arg(&p).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("s.toml") && e.contains("scorer") && e.contains("line 5"),
        "{e}"
    );
}

/// The log-likelihood of each choice of the first 20 MMLU questions, against lm-evaluation-harness
/// on the same weights (`scripts/lm_eval_reference.py`): the same choice on every question, the
/// same `acc` and `acc_norm`, and log-likelihoods within 2e-3.
#[test]
fn multiple_choice_by_log_likelihood_agrees_with_lm_evaluation_harness() {
    let reference = crate::common::read_json("lm_eval/mmlu_reference.json");
    let want: std::collections::HashMap<&str, &serde_json::Value> = reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = dir.path().join("out");
    cli_ok(
        cli()
            .current_dir(root)
            .args(["eval", "evals/mmlu-loglikelihood.toml", "--limit", "20"])
            .args(["--no-cache", "--out"])
            .arg(&out),
    );
    let rows = read_rows(&out.join("results.jsonl"));
    assert_eq!(rows.len(), 20);
    let (mut worst, mut acc, mut acc_ref, mut norm, mut norm_ref) = (0f64, 0.0, 0.0, 0.0, 0.0);
    for r in &rows {
        let id = r["case_id"].as_str().unwrap();
        let w = want[id];
        let got: Vec<f64> = serde_json::from_value(r["loglikelihoods"].clone()).unwrap();
        let lm: Vec<f64> = serde_json::from_value(w["loglikelihoods"].clone()).unwrap();
        for (a, b) in got.iter().zip(&lm) {
            worst = worst.max((a - b).abs());
        }
        let pick = |v: &[f64]| {
            v.iter()
                .enumerate()
                .fold(0, |b, (i, x)| if *x > v[b] { i } else { b })
        };
        assert_eq!(pick(&got), pick(&lm), "{id}: {got:?} vs lm-eval {lm:?}");
        assert_eq!(r["score"].as_f64(), w["acc"].as_f64(), "{id}");
        assert_eq!(r["acc_norm"].as_f64(), w["acc_norm"].as_f64(), "{id}");
        acc += r["score"].as_f64().unwrap();
        norm += r["acc_norm"].as_f64().unwrap();
        acc_ref += w["acc"].as_f64().unwrap();
        norm_ref += w["acc_norm"].as_f64().unwrap();
    }
    assert!(worst < 2e-3, "max |Δ log-likelihood| = {worst}");
    assert_eq!((acc, norm), (acc_ref, norm_ref));
    eprintln!("20 questions: acc {acc}/20, acc_norm {norm}/20; max |Δ ll| = {worst:.2e}");
    let summary = std::fs::read_to_string(out.join("summary.json")).unwrap();
    assert!(summary.contains("\"acc_norm\""), "{summary}");
}

/// A chat-only endpoint cannot give prompt log-probabilities: the run is refused before any
/// request, saying why.
#[test]
fn a_log_likelihood_suite_refuses_a_chat_only_target() {
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = crate::common::run(
        crate::common::in_dir(dir.path())
            .arg("eval")
            .arg(root.join("evals/mmlu-loglikelihood.toml"))
            .args(["-t", "ollama:llama3", "--limit", "2"]),
    );
    assert!(!o.ok);
    assert!(
        o.stderr.contains("`ollama:llama3`") && o.stderr.contains("chat completions only"),
        "{}",
        o.stderr
    );
}

/// `loglikelihood` and `loglikelihood_rolling` on the tiny model: the reference's log-likelihood
/// and greedy flag, and bits per byte over whole texts, as the model's own scores give them.
#[test]
fn loglikelihood_and_rolling_suites_score_what_the_model_scores() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = crate::common::tiny_model("llama3", d);
    std::fs::write(
        d.join("ll.toml"),
        "name = \"ll\"\noutput_type = \"loglikelihood\"\nuser = \"{{ q }}\"\nreference = \"a\"\n\
         [[cases]]\nq = \"The sky is\"\na = \"blue\"\n[[cases]]\nq = \"One, two,\"\na = \"three\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("rolling.toml"),
        "name = \"rolling\"\noutput_type = \"loglikelihood_rolling\"\nuser = \"{{ text }}\"\n\
         [[cases]]\ntext = \"A short text to score.\"\n[[cases]]\ntext = \"And another one, longer than the first.\"\n",
    )
    .unwrap();
    cli_ok(
        crate::common::in_dir(d)
            .args(["eval", "ll.toml", "rolling.toml", "--model"])
            .arg(&model)
            .args(["--no-cache", "--out", "out"]),
    );
    let rows = read_rows(&d.join("out/results.jsonl"));
    let engine = switchyard::generate::Engine::load(
        switchyard::load::files::open_folder(&model, "tiny").unwrap(),
        &crate::common::cpu(),
    )
    .unwrap();
    let tok = &engine.tokenizer;
    let (mut ll_sum, mut bytes) = (0f64, 0usize);
    for r in &rows {
        let got = r["loglikelihoods"][0].as_f64().unwrap();
        if r["suite"] == "ll" {
            // The context, then " " + the reference: its tokens' log-probabilities.
            let (ctx, cont) = if r["case_id"] == "1" {
                ("The sky is", " blue")
            } else {
                ("One, two,", " three")
            };
            let (ids, offsets) = tok.encode_with_offsets(&format!("{ctx}{cont}")).unwrap();
            let scored = engine.score(&ids, &offsets, 1);
            let want: f64 = scored
                .iter()
                .filter(|t| t.offset >= ctx.len())
                .map(|t| t.logprob.unwrap() as f64)
                .sum();
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            let greedy = scored
                .iter()
                .filter(|t| t.offset >= ctx.len())
                .all(|t| t.top_logprobs[0].token == t.token);
            assert_eq!(r["score"].as_f64(), Some(f64::from(u8::from(greedy))));
        } else {
            // Every token of the text, the first predicted from the BOS token.
            let text = if r["case_id"] == "1" {
                "A short text to score."
            } else {
                "And another one, longer than the first."
            };
            let (mut ids, mut offsets) = tok.encode_with_offsets(text).unwrap();
            ids.insert(0, tok.bos_id());
            offsets.insert(0, 0);
            let want: f64 = engine
                .score(&ids, &offsets, 0)
                .iter()
                .filter_map(|t| t.logprob.map(f64::from))
                .sum();
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
            assert_eq!(r["scored_bytes"].as_u64(), Some(text.len() as u64));
            ll_sum += got;
            bytes += text.len();
        }
    }
    let summary: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/summary.json")).unwrap())
            .unwrap();
    let rolling = summary
        .iter()
        .find(|s| s["suite"] == "rolling" && s["tag"] == "all")
        .unwrap();
    let bpb = -ll_sum / (bytes as f64 * std::f64::consts::LN_2);
    assert!(
        (rolling["bits_per_byte"].as_f64().unwrap() - bpb).abs() < 1e-9,
        "{rolling}"
    );
    let ll = summary
        .iter()
        .find(|s| s["suite"] == "ll" && s["tag"] == "all")
        .unwrap();
    assert!(ll["perplexity"].as_f64().unwrap() > 1.0, "{ll}");
}

/// A generated traffic log: three models in unequal shares, LiteLLM payloads beside
/// `{request, response}` lines, content as parts, a duplicate, and ids that carry a user's email.
fn traffic_log() -> String {
    let mut lines = Vec::new();
    let question = |i: usize| format!("What is {i} plus {i}?");
    for i in 0..12 {
        lines.push(serde_json::json!({
            "request": {"model": "gpt-4o-mini", "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": question(i)}]},
            "response": {"id": format!("chatcmpl-alice@example.com-{i}"), "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("{i} plus {i} is {}.", 2 * i)}}]}
        }));
    }
    for i in 0..6 {
        // LiteLLM's standard logging payload, content as parts.
        lines.push(serde_json::json!({
            "id": format!("litellm-bob@example.com-{i}"), "model": "claude-3-5-haiku", "call_type": "completion",
            "messages": [{"role": "user", "content": [{"type": "text", "text": question(100 + i)}]}],
            "response": {"model": "claude-3-5-haiku", "choices": [{"message": {"role": "assistant", "content": format!("{}", 200 + 2 * i)}}]},
            "metadata": {"user_api_key_user_email": "bob@example.com"}
        }));
    }
    let capital = serde_json::json!({
        "request": {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        "response": {"id": "carol@example.com-0", "model": "llama-3.1-8b",
            "choices": [{"message": {"role": "assistant", "content": "The capital of France is Paris."}}]}
    });
    lines.push(capital.clone());
    lines.push(capital); // logged twice: one case
    lines.push(serde_json::json!({
        "request": {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "Name a primary colour."}]},
        "response": {"id": "carol@example.com-1", "model": "llama-3.1-8b",
            "choices": [{"message": {"role": "assistant", "content": "Red."}}]}
    }));
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[test]
fn logged_traffic_becomes_a_suite_sampled_by_model_with_hashed_ids() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("traffic.jsonl"), traffic_log()).unwrap();
    let import_seeded = |name: &str, sample: &str, seed: &str| {
        let mut c = crate::common::cli();
        c.current_dir(d)
            .args(["suite", "import", "traffic.jsonl", "--name", name])
            .args(["--out", &format!("suites/{name}.toml"), "--sample", sample])
            .args(["--seed", seed, "--max-tokens", "16"]);
        c
    };
    let import = |name: &str, sample: &str| import_seeded(name, sample, "7");
    // 20 distinct exchanges (12 / 6 / 2); a sample of 10 keeps each model's share.
    let text = cli_ok(&mut import("support", "10"));
    assert!(
        text.contains(
            "10 cases of 21 logged (claude-3-5-haiku: 3, gpt-4o-mini: 6, llama-3.1-8b: 1)"
        ),
        "{text}"
    );
    let rows = read_rows(&d.join("suites/support.jsonl"));
    assert_eq!(rows.len(), 10);
    let suite_text = std::fs::read_to_string(d.join("suites/support.toml")).unwrap();
    let written = format!(
        "{suite_text}{}",
        std::fs::read_to_string(d.join("suites/support.jsonl")).unwrap()
    );
    assert!(
        !written.contains("example.com") && !written.contains("chatcmpl"),
        "{written}"
    );
    for r in &rows {
        let id = r["id"].as_str().unwrap();
        assert!(
            id.len() == 16 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{r}"
        );
        // The logged answer is the reference and the last turn.
        let messages = r["messages"].as_array().unwrap();
        assert_eq!(messages.last().unwrap()["content"], r["reference"]);
        assert!(messages.iter().all(|m| m["content"].is_string()), "{r}");
    }
    // The same seed draws the same sample; another seed, another.
    cli_ok(&mut import("again", "10"));
    let ids = |name: &str| -> Vec<serde_json::Value> {
        read_rows(&d.join(format!("suites/{name}.jsonl")))
            .into_iter()
            .map(|r| r["id"].clone())
            .collect()
    };
    assert_eq!(ids("support"), ids("again"));
    cli_ok(&mut import_seeded("other", "10", "8"));
    assert_ne!(ids("support"), ids("other"));
    // The whole log, scored on the local model by word similarity to the logged answer.
    let text = cli_ok(&mut import("all", "100"));
    assert!(text.contains("20 cases of 21 logged"), "{text}");
    let out = d.join("out");
    cli_ok(
        crate::common::in_dir(d)
            .args(["eval", "suites/all.toml", "--out"])
            .arg(&out),
    );
    let results = read_rows(&out.join("results.jsonl"));
    assert_eq!(results.len(), 20);
    let capital = results
        .iter()
        .find(|r| r["reference"] == "The capital of France is Paris.")
        .unwrap();
    assert_eq!(capital["output"], "The capital of France is Paris.");
    assert_eq!(capital["score"], 1.0);
    assert_eq!(capital["pass"], true);
    assert!(
        results
            .iter()
            .all(|r| (0.0..=1.0).contains(&r["score"].as_f64().unwrap()))
    );
    let gpt: Vec<_> = results
        .iter()
        .filter(|r| r["tags"].as_str().unwrap().contains("gpt-4o-mini"))
        .collect();
    assert_eq!(
        gpt.len(),
        12,
        "the model each answer came from is the case's tag"
    );
    assert!(
        results
            .iter()
            .any(|r| r["pass"] == false && r["reason"].as_str().unwrap().contains("word F1")),
        "{results:?}"
    );
    // A line that is not an exchange is named by file and line; the suite may not overwrite its log.
    std::fs::write(
        d.join("bad.jsonl"),
        format!(
            "{}{{\"request\": {{\"model\": \"x\"}}, \"response\": {{}}}}\n",
            traffic_log().lines().next().unwrap().to_string() + "\n"
        ),
    )
    .unwrap();
    let o = crate::common::in_dir(d)
        .args([
            "suite",
            "import",
            "bad.jsonl",
            "--name",
            "bad",
            "--out",
            "bad.toml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("bad.jsonl")
            && err.contains("line 2")
            && err.contains("messages"),
        "{err}"
    );
    let o = crate::common::in_dir(d)
        .args([
            "suite",
            "import",
            "traffic.jsonl",
            "--name",
            "traffic",
            "--out",
            "traffic.toml",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("would overwrite the log"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("traffic.jsonl")).unwrap(),
        traffic_log()
    );
}
