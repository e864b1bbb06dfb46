//! The eval runner against real HTTP servers on 127.0.0.1: the fault catalogue of
//! `switchyard::providers::fault_server` (429 with Retry-After, 500s, slow answers past the
//! timeout, cut connections, streams without an end, malformed events, resets, client errors),
//! resuming, the response cache, a killed run, and API keys kept out of every file.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::runtime;
use switchyard::providers::fault_server::{Behaviour, FaultServer};

const KEY: &str = "sk-test-9f8e7d6c5b4a";

/// (fault, attempts when streamed, attempts when not, ends in an error row)
const FAULTS: &[(&str, u32, u32, bool)] = &[
    ("none", 1, 1, false),
    ("429", 2, 2, false),
    ("500x2", 3, 3, false),
    ("slow", 2, 2, false),
    ("truncate", 2, 2, false),
    ("nodone", 2, 1, false),
    ("malformed", 2, 2, false),
    ("reset", 2, 2, false),
    ("400", 1, 1, true),
    ("500always", 3, 3, true),
    ("echo-key", 1, 1, true),
];

fn write_suite(dir: &Path, extra_ok_cases: usize) {
    let mut s = String::from(
        "name = \"faults\"\ntags = [\"faults\"]\nid_column = \"id\"\nuser = \"{{ prompt }}\"\nreference = \"answer\"\n\
         [generation]\nmax_tokens = 16\n[[scorers]]\ntype = \"exact\"\n",
    );
    for (f, ..) in FAULTS {
        let answer = format!("answer to {f}");
        s.push_str(&format!(
            "[[cases]]\nid = \"{f}\"\nprompt = \"[fault:{f}][answer:{answer}] question {f}\"\nanswer = \"{answer}\"\n"
        ));
    }
    for i in 0..extra_ok_cases {
        s.push_str(&format!(
            "[[cases]]\nid = \"ok{i}\"\nprompt = \"[answer:number {i}] question {i}\"\nanswer = \"number {i}\"\n"
        ));
    }
    std::fs::write(dir.join("suite.toml"), s).unwrap();
}

fn write_targets(dir: &Path, servers: &[(&str, &FaultServer, bool)], concurrency: usize) {
    let mut t = String::new();
    for (name, server, stream) in servers {
        t.push_str(&format!(
            "[[targets]]\nname = \"{name}\"\nprovider = \"openai-compatible\"\nbase_url = \"{}\"\nmodel = \"stub-model\"\n\
             api_key_env = \"SWITCHYARD_TEST_KEY\"\nstream = {stream}\ntimeout_s = 1.5\nmax_retries = 2\nconcurrency = {concurrency}\n\
             price_in = 1.0\nprice_out = 2.0\n",
            server.base_url()
        ));
    }
    std::fs::write(dir.join("targets.toml"), t).unwrap();
}

fn eval_cmd(dir: &Path, targets: &[&str]) -> Command {
    let mut c = crate::common::in_dir(dir);
    c.env("SWITCHYARD_TEST_KEY", KEY)
        .args(["eval", "suite.toml", "--targets-file", "targets.toml"])
        .args(["--out", "out", "--cache-dir", "cache"]);
    for t in targets {
        c.args(["--target", t]);
    }
    c
}

use crate::common::cli_ok as run_ok;

fn rows(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("out/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file under `dir`, read as bytes, must not contain `needle`.
fn assert_absent(dir: &Path, needle: &str) {
    for e in walk(dir) {
        let bytes = std::fs::read(&e).unwrap();
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{} contains the API key",
            e.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn faults_are_retried_and_nothing_is_lost_or_double_counted() {
    let rt = runtime();
    let fast = Behaviour {
        latency: Duration::from_millis(5),
        chunk_delay: Duration::from_millis(2),
    };
    let streamed = rt.block_on(FaultServer::start(0, fast, true)).unwrap();
    let plain = rt.block_on(FaultServer::start(0, fast, true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_suite(d, 5);
    write_targets(
        d,
        &[("streamed", &streamed, true), ("plain", &plain, false)],
        4,
    );

    let text = run_ok(&mut eval_cmd(d, &["streamed", "plain"]));
    let n_cases = FAULTS.len() + 5;
    let rs = rows(d);
    assert_eq!(
        rs.len(),
        2 * n_cases,
        "one row per case and target:\n{text}"
    );
    let mut seen = std::collections::HashSet::new();
    for r in &rs {
        assert!(
            seen.insert((r["target"].to_string(), r["case_id"].to_string())),
            "duplicate row {r}"
        );
    }
    for (target, server) in [("streamed", &streamed), ("plain", &plain)] {
        let mine: HashMap<String, &serde_json::Value> = rs
            .iter()
            .filter(|r| r["target"] == target)
            .map(|r| (r["case_id"].as_str().unwrap().to_string(), r))
            .collect();
        let mut expected_requests = 5;
        for &(fault, a_stream, a_plain, fails) in FAULTS {
            let r = mine[fault];
            let attempts = if target == "streamed" {
                a_stream
            } else {
                a_plain
            };
            expected_requests += attempts;
            assert_eq!(r["attempts"], attempts, "{target} {fault}: {r}");
            if fails {
                assert!(
                    r["error"].is_string() && r["score"].is_null(),
                    "{target} {fault}: {r}"
                );
            } else {
                assert!(r["error"].is_null(), "{target} {fault}: {r}");
                assert_eq!(r["score"], 1.0, "{target} {fault}: {r}");
                assert_eq!(r["output"], format!("answer to {fault}"));
                assert!(r["prompt_tokens"].as_u64().unwrap() > 0);
                assert!(r["cost_usd"].as_f64().unwrap() > 0.0);
                if target == "streamed" {
                    let (ttft, lat) = (
                        r["ttft_s"].as_f64().unwrap(),
                        r["latency_s"].as_f64().unwrap(),
                    );
                    assert!(0.0 < ttft && ttft < lat, "{r}");
                }
            }
        }
        // The server saw exactly the requests the rows account for.
        assert_eq!(server.requests(), expected_requests, "{target}");
        let hits = server.hits();
        assert!(
            hits.iter()
                .all(|h| h.authorization.as_deref() == Some(&format!("Bearer {KEY}")[..]))
        );
        // Retry-After: 1 was honoured.
        let t429: Vec<f64> = hits
            .iter()
            .filter(|h| h.fault.as_deref() == Some("429"))
            .map(|h| h.at)
            .collect();
        assert!(
            t429[1] - t429[0] >= 0.99,
            "{target}: retried after {:.3} s",
            t429[1] - t429[0]
        );
        assert!(hits.iter().all(|h| h.body["model"] == "stub-model"));
        assert_eq!(
            hits[0].body["stream"] == serde_json::json!(true),
            target == "streamed"
        );
    }
    let summary: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/summary.json")).unwrap())
            .unwrap();
    let all = summary
        .iter()
        .find(|s| s["tag"] == "all" && s["target"] == "streamed")
        .unwrap();
    assert_eq!(all["errors"], 3);
    assert!(
        (all["mean_score"].as_f64().unwrap() - 13.0 / 16.0).abs() < 1e-9,
        "{all}"
    );
    assert!(d.join("out/results.parquet").exists() && d.join("out/summary.csv").exists());
    let md = std::fs::read_to_string(d.join("out/summary.md")).unwrap();
    assert!(
        md.contains("| faults | all | streamed | 16 | 81.2 |"),
        "{md}"
    );
    let cmp = std::fs::read_to_string(d.join("out/comparisons.json")).unwrap();
    assert!(cmp.contains("\"a\": \"streamed\""), "{cmp}");

    // Run it again: finished rows are kept, failed ones asked again (and only they).
    let before = (streamed.requests(), plain.requests());
    let text = run_ok(&mut eval_cmd(d, &["streamed", "plain"]));
    assert!(
        text.contains(&format!("({} resumed)", 2 * (n_cases - 3))),
        "{text}"
    );
    assert_eq!(
        streamed.requests() - before.0,
        1 + 3 + 1,
        "only the failed cases are asked again"
    );
    assert_eq!(plain.requests() - before.1, 1 + 3 + 1);
    assert_eq!(rows(d).len(), 2 * n_cases);

    // Start over: the cache answers everything that succeeded before.
    let before = (streamed.requests(), plain.requests());
    let text = run_ok(eval_cmd(d, &["streamed", "plain"]).arg("--fresh"));
    assert!(
        text.contains(&format!("{} from cache", 2 * (n_cases - 3))),
        "{text}"
    );
    assert_eq!(streamed.requests() - before.0, 5);
    assert_eq!(
        rows(d).iter().filter(|r| r["cached"] == true).count(),
        2 * (n_cases - 3)
    );

    // The key went to the server in every request, and into no file.
    assert_absent(&d.join("out"), KEY);
    assert_absent(&d.join("cache"), KEY);
    let echo = rs.iter().find(|r| r["case_id"] == "echo-key").unwrap();
    assert!(
        echo["error"].as_str().unwrap().contains("[REDACTED]"),
        "{echo}"
    );
}

#[test]
fn a_killed_run_resumes_without_repeating_a_request() {
    let rt = runtime();
    let slow = Behaviour {
        latency: Duration::from_millis(120),
        chunk_delay: Duration::from_millis(1),
    };
    let server = rt.block_on(FaultServer::start(0, slow, true)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("suite.toml"),
        format!(
            "name = \"many\"\nuser = \"[answer:a{{{{ n }}}}] case {{{{ n }}}}\"\nreference = \"n\"\n[[scorers]]\ntype = \"contains\"\n{}",
            (0..40).map(|i| format!("[[cases]]\nn = \"{i}\"\n")).collect::<String>()
        ),
    )
    .unwrap();
    write_targets(d, &[("stub", &server, true)], 2);
    let mut child = eval_cmd(d, &["stub"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let results = d.join("out/results.jsonl");
    let t0 = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(&results)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if n >= 10 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the run made no progress"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();
    let first_run: Vec<String> = std::fs::read_to_string(&results)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|r| r["case_id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        first_run.len() >= 10 && first_run.len() < 40,
        "{}",
        first_run.len()
    );
    let sent_before = server.requests();

    let text = run_ok(&mut eval_cmd(d, &["stub"]));
    assert!(
        text.contains(&format!("({} resumed)", first_run.len())),
        "{text}"
    );
    let rs = rows(d);
    assert_eq!(rs.len(), 40);
    let ids: std::collections::HashSet<&str> =
        rs.iter().map(|r| r["case_id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 40);
    // Answers that reached the results were never asked again; at most the requests in flight
    // at the kill (concurrency 2) were sent twice.
    let hits = server.hits();
    let mut per_prompt: HashMap<&str, u32> = HashMap::new();
    for h in &hits {
        *per_prompt.entry(h.prompt.as_str()).or_default() += 1;
    }
    for id in &first_run {
        let n = id.parse::<usize>().unwrap() - 1; // line-number ids: case n is on line n + 1
        assert_eq!(
            per_prompt[format!("[answer:a{n}] case {n}").as_str()],
            1,
            "case {id}"
        );
    }
    let repeated = per_prompt.values().filter(|&&c| c > 1).count();
    assert!(repeated <= 2, "{repeated} requests repeated");
    assert_eq!(server.requests() as usize, 40 + repeated);
    assert!(sent_before as usize >= first_run.len());
}

/// A judge scorer sends each answer to the judge target (here a server that grades strictly) and
/// scores by its verdict; judgements are cached like any answer.
#[test]
fn a_judge_target_grades_answers() {
    let rt = runtime();
    let b = Behaviour::default();
    let (answering, judging) = (
        rt.block_on(FaultServer::start(0, b, true)).unwrap(),
        rt.block_on(FaultServer::start(0, b, true)).unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("suite.toml"),
        "name = \"judged\"\nuser = \"[answer:{{ said }}] q{{ n }}\"\nreference = \"truth\"\n\
         [[scorers]]\ntype = \"judge\"\ntarget = \"grader\"\nrubric = \"Is the answer the reference?\"\n\
         [[cases]]\nn = 1\nsaid = \"Paris\"\ntruth = \"Paris\"\n[[cases]]\nn = 2\nsaid = \"Lyon\"\ntruth = \"Paris\"\n\
         [[cases]]\nn = 3\nsaid = \"4\"\ntruth = \"4\"\n",
    )
    .unwrap();
    write_targets(
        d,
        &[("answerer", &answering, true), ("grader", &judging, false)],
        2,
    );
    let text = run_ok(&mut eval_cmd(d, &["answerer"]));
    let rs = rows(d);
    let by: HashMap<&str, &serde_json::Value> = rs
        .iter()
        .map(|r| (r["case_id"].as_str().unwrap(), r))
        .collect();
    assert_eq!(by["1"]["score"], 1.0, "{text}");
    assert_eq!(by["2"]["score"], 0.0);
    assert!(
        by["2"]["reason"]
            .as_str()
            .unwrap()
            .contains("VERDICT: FAIL"),
        "{}",
        by["2"]
    );
    assert_eq!(by["3"]["score"], 1.0);
    assert_eq!(judging.requests(), 3);
    let graded = &judging.hits()[0].body;
    assert!(
        graded["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("Is the answer the reference?")
    );
    // Judgements come from the cache the second time.
    run_ok(eval_cmd(d, &["answerer"]).arg("--fresh"));
    assert_eq!((answering.requests(), judging.requests()), (3, 3));
}

/// `rpm` holds the request rate: 60 per minute with a ten-second burst lets 10 requests go at
/// once and the next ones one a second.
#[test]
fn requests_per_minute_are_respected() {
    let rt = runtime();
    let server = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("suite.toml"),
        format!(
            "name = \"paced\"\nuser = \"[answer:x] {{{{ n }}}}\"\n[[scorers]]\ntype = \"json\"\n{}",
            (0..14)
                .map(|i| format!("[[cases]]\nn = {i}\n"))
                .collect::<String>()
        ),
    )
    .unwrap();
    write_targets(d, &[("paced", &server, true)], 8);
    let t = std::fs::read_to_string(d.join("targets.toml")).unwrap() + "rpm = 60\n";
    std::fs::write(d.join("targets.toml"), t).unwrap();
    run_ok(&mut eval_cmd(d, &["paced"]));
    let at: Vec<f64> = server.hits().iter().map(|h| h.at).collect();
    assert_eq!(at.len(), 14);
    let span =
        at.iter().cloned().fold(0.0, f64::max) - at.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        (3.5..6.0).contains(&span),
        "14 requests at 60 rpm took {span:.2} s"
    );
}

/// Repeats ask each case again with the next seed; each repeat is its own request and cache
/// entry, and the interval is taken over cases (repeats averaged), not over rows.
#[test]
fn repeats_are_separate_requests_with_their_own_seeds() {
    let rt = runtime();
    let server = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("suite.toml"),
        format!(
            "name = \"rep\"\nuser = \"[answer:{{{{ a }}}}] q{{{{ n }}}}\"\nreference = \"a\"\nrepeats = 3\n\
             [generation]\ntemperature = 0.7\nseed = 100\n[[scorers]]\ntype = \"exact\"\n{}",
            (0..4).map(|i| format!("[[cases]]\nn = {i}\na = \"{}\"\n", if i < 3 { "x" } else { "y" })).collect::<String>()
        ),
    )
    .unwrap();
    write_targets(d, &[("stub", &server, true)], 4);
    run_ok(&mut eval_cmd(d, &["stub"]));
    assert_eq!(rows(d).len(), 12);
    assert_eq!(server.requests(), 12);
    let mut seeds: Vec<u64> = server
        .hits()
        .iter()
        .filter(|h| h.prompt.ends_with("q0"))
        .map(|h| h.body["seed"].as_u64().unwrap())
        .collect();
    seeds.sort();
    assert_eq!(seeds, vec![100, 101, 102]);
    let summary: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary[0]["cases"], 4);
    assert_eq!(summary[0]["results"], 12);
    assert_eq!(summary[0]["ci_method"], "bootstrap-cases");
    // `--repeats` overrides the suite; repeats 0-2 come from the cache, 3 is new.
    run_ok(eval_cmd(d, &["stub"]).args(["--repeats", "4", "--fresh"]));
    assert_eq!(server.requests(), 16);
}

/// Header values: `${VAR}` references are expanded when sent and kept as references in
/// `run.json`; literal values (possibly secrets) are not recorded.
#[test]
fn header_values_stay_out_of_run_records() {
    let rt = runtime();
    let server = rt
        .block_on(FaultServer::start(0, Behaviour::default(), true))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("suite.toml"),
        "name = \"h\"\nuser = \"[answer:x] q\"\n[[scorers]]\ntype = \"json\"\n[[cases]]\nn = 1\n",
    )
    .unwrap();
    write_targets(d, &[("stub", &server, true)], 1);
    let t = std::fs::read_to_string(d.join("targets.toml")).unwrap()
        + "headers = { X-Ref = \"${SWITCHYARD_TEST_KEY}\", X-Literal = \"literal-value-4242\" }\n";
    std::fs::write(d.join("targets.toml"), t).unwrap();
    run_ok(&mut eval_cmd(d, &["stub"]));
    assert_eq!(server.requests(), 1);
    let run = std::fs::read_to_string(d.join("out/run.json")).unwrap();
    assert!(run.contains("${SWITCHYARD_TEST_KEY}"), "{run}");
    assert!(
        !run.contains("literal-value-4242") && run.contains("[not recorded]"),
        "{run}"
    );
    assert_absent(&d.join("out"), KEY);
    // Latencies are only as good as the record of the machine that measured them.
    let run: serde_json::Value = serde_json::from_str(&run).unwrap();
    assert_eq!(run["machine"], switchyard::machine::this().to_json());
    assert!(
        run["machine"]["logical_cpus"].as_u64().unwrap() >= 1,
        "{run}"
    );
}
