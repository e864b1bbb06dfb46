//! `switchyard run`: recipe → training → eval of base and tuned → policy → report, on the real
//! model with a small recipe; a second run skips every stage; the report and the run record hold
//! what a reader needs.

use crate::common::cli;

#[test]
fn a_pipeline_runs_end_to_end_and_a_rerun_skips_every_stage() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::write(
        d.join("pipeline.toml"),
        format!(
            "name = \"tiny\"\nout = \"{out}\"\nrecipe = \"{root}/recipes/smoke.toml\"\nsuites = [\"{root}/evals/word-reversal.toml\", \"{root}/evals/arithmetic.toml\"]\n\
             limit = 3\nproviders = [\"groq-llama-3.1-8b\"]\ntargets_file = \"{root}/evals/targets.toml\"\n[route]\nmachine_price_per_hour = 0.1\nmin_cases = 1\n",
            out = d.join("run").display(),
            root = root.display()
        ),
    )
    .unwrap();
    let run = || {
        let o = cli()
            .current_dir(root)
            .env_remove("GROQ_API_KEY")
            .env(
                "SWITCHYARD_HOME",
                crate::common::smollm2()
                    .0
                    .parent()
                    .unwrap()
                    .parent()
                    .unwrap(),
            )
            .args(["run"])
            .arg(d.join("pipeline.toml"))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{err}");
        err
    };
    let first = run();
    assert!(
        first.contains("skipping provider `groq-llama-3.1-8b`: GROQ_API_KEY is not set"),
        "{first}"
    );
    // Off a terminal: plain progress lines for training and the eval, and no escape codes.
    assert!(
        first.contains("train step 20/20 · loss ") && first.contains(" tok/s · "),
        "{first}"
    );
    assert!(first.contains("eval 12/12 rows · 0 errors · "), "{first}");
    assert!(
        !first.contains('\x1b'),
        "escape codes off a terminal: {first:?}"
    );
    let r = d.join("run");
    assert!(r.join("train/adapter/adapter_model.safetensors").exists());
    let summary = std::fs::read_to_string(r.join("eval/summary.csv")).unwrap();
    assert!(
        summary.contains("base") && summary.contains("tuned"),
        "{summary}"
    );
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("policy.json")).unwrap()).unwrap();
    assert!(
        policy["routes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["task"] == "word_reversal")
    );
    assert!(r.join("litellm.yaml").exists());
    let html = std::fs::read_to_string(r.join("report.html")).unwrap();
    assert!(
        html.matches("<svg").count() >= 5,
        "loss, 2 quality/cost, latency, economics"
    );
    assert!(html.contains("Routing table") && html.contains("word_reversal"));
    for fetch in [
        "src=\"http",
        "href=\"http",
        "<link",
        "<script src",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(fetch), "the HTML needs no network: {fetch}");
    }
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("record/record.json")).unwrap())
            .unwrap();
    assert_eq!(record["model"]["sha256"].as_object().unwrap().len(), 1);
    assert_eq!(record["machine"], switchyard::machine::this().to_json());
    let on = format!(" · on {}", switchyard::machine::this().summary());
    let md = std::fs::read_to_string(r.join("report.md")).unwrap();
    assert!(md.contains(&on), "the report names the machine: {md}");
    assert!(r.join("record/recipe/smoke.toml").exists() && r.join("record/pipeline.toml").exists());
    assert!(r.join("record/suites/word-reversal.toml").exists());

    // As a person sees it: Chromium renders the page; every plot has a size and drawn marks.
    let plots = html.matches("<figure class=\"plot\"").count();
    let dom = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("file://{}", r.join("report.html").display()))
        .output()
        .expect("chromium (apt-get install chromium; .ci/run installs it)");
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(
        dom.contains(&format!("data-plots-rendered=\"{plots}\"")),
        "{plots} plots: {}",
        &dom[dom.len().saturating_sub(400)..]
    );

    // The notebooks run headlessly against the run's outputs.
    let nb = std::process::Command::new(crate::common::notebooks_python())
        .arg(root.join("scripts/run_notebooks.py"))
        .arg(&r)
        .output()
        .unwrap();
    assert!(
        nb.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&nb.stdout),
        String::from_utf8_lossy(&nb.stderr)
    );
    for n in ["scores_by_tag", "failures", "compare_runs"] {
        assert!(r.join(format!("notebooks/{n}.ipynb")).exists(), "{n}");
    }

    let second = run();
    for stage in ["train", "eval", "route"] {
        assert!(
            second.contains(&format!("== {stage}: unchanged, skipped")),
            "{stage}: {second}"
        );
    }
}
