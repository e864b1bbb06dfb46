//! `switchyard eval` on the real model: scoring, reasons, intervals, Parquet results, bad suites.

mod common;

use common::{cli, cli_ok};

#[test]
fn a_suite_scores_the_model_and_writes_results() {
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
    let text = cli_ok(
        cli()
            .args(["eval"])
            .arg(d.join("suite.toml"))
            .arg("--out")
            .arg(&out),
    );
    assert!(text.contains("1/2 passed = 50.0%"), "{text}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["passed"], 1);
    let ci = summary["ci95"].as_array().unwrap();
    assert!(ci[0].as_f64().unwrap() < 0.5 && ci[1].as_f64().unwrap() > 0.5);
    let cases: Vec<serde_json::Value> = std::fs::read_to_string(out.join("cases.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(cases[0]["output"].as_str().unwrap().contains("Paris"));
    assert_eq!(cases[0]["pass"], true);
    assert_eq!(cases[1]["pass"], false);
    assert!(
        cases[1]["verdicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("Lyon")
    );
    let f = std::fs::File::open(out.join("cases.parquet")).unwrap();
    use polars::prelude::*;
    let df = ParquetReader::new(f).finish().unwrap();
    assert_eq!(df.height(), 2);
    assert_eq!(
        df.column("pass").unwrap().bool().unwrap().get(0),
        Some(true)
    );
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
