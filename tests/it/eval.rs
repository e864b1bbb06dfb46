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
