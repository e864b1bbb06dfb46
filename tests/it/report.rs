//! `switchyard report` as a person sees it: a run folder written by hand (three targets, two
//! suites, tags, a failure, an error, disagreements, outputs that are HTML), its policy derived
//! by `route derive`, the report opened in headless Chromium: the heat map, the evidence tables,
//! every output side by side, the filters (set from the address), and screenshots in
//! `$CARGO_TARGET_TMPDIR/report/`.

use std::path::{Path, PathBuf};

use switchyard::eval::ResultRow;
use switchyard::eval::results;

use crate::common::{cli_ok, in_dir};

const TARGETS: [&str; 3] = ["base", "hosted", "tuned"];

/// An output that would run script if it were markup.
const HOSTILE: &str = "</script><script>document.body.dataset.pwned=1</script>\
                       <img src=x onerror=\"document.body.dataset.pwned=2\">";

/// What one target did on one case.
#[derive(Clone, Copy)]
enum Did {
    Pass,
    Fail,
    Error,
}
use Did::{Error, Fail, Pass};

/// A case: suite, id, tag, question, reference, and what base, hosted and tuned did.
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    [Did; 3],
);

const CASES: [Case; 10] = [
    (
        "qa",
        "q1",
        "geo",
        "Capital of France?",
        "Paris",
        [Pass, Pass, Pass],
    ),
    (
        "qa",
        "q2",
        "geo",
        "Capital of Australia?",
        "Canberra",
        [Fail, Pass, Pass],
    ),
    (
        "qa",
        "q3",
        "geo",
        "Capital of Bhutan?",
        "Thimphu",
        [Fail, Fail, Fail],
    ),
    (
        "qa",
        "q4",
        "history",
        "Year of Hastings?",
        "1066",
        [Pass, Pass, Pass],
    ),
    (
        "qa",
        "q5",
        "history",
        "Who wrote <b>Beowulf</b>?",
        "unknown",
        [Pass, Fail, Pass],
    ),
    (
        "qa",
        "q6",
        "history",
        "First emperor of Rome?",
        "Augustus",
        [Pass, Pass, Pass],
    ),
    (
        "code",
        "c1",
        "python",
        "len of [1,2]?",
        "2",
        [Pass, Pass, Pass],
    ),
    ("code", "c2", "python", "2**10?", "1024", [Fail, Pass, Fail]),
    ("code", "c3", "python", "'a'*3?", "aaa", [Error, Pass, Pass]),
    ("code", "c4", "python", "max(3,7)?", "7", [Pass, Pass, Pass]),
];

fn row(line: usize, target: &str, did: Did) -> ResultRow {
    let (suite, case, tag, question, reference, _) = CASES[line];
    let output = match (case, target, did) {
        ("q5", "hosted", _) => HOSTILE.to_string(),
        (_, _, Pass) => format!("The answer is {reference}."),
        _ => format!("I think it is {target}-{case}-wrong."),
    };
    let (score, pass, reason) = match did {
        Pass => (1.0, true, None),
        _ => (0.0, false, Some(format!("expected \"{reference}\""))),
    };
    let verdict = serde_json::json!([{"scorer": "contains", "score": score,
        "extracted": if matches!(did, Pass) { Some(reference) } else { None }, "reason": reason}]);
    let local = target != "hosted";
    let mut r = ResultRow {
        run_id: "report-test".into(),
        suite: suite.into(),
        case_id: case.into(),
        line: line as u64,
        tags: tag.into(),
        target: target.into(),
        provider: if local { "local" } else { "openai-compatible" }.into(),
        model: Some(format!("{target}-model")),
        prompt_hash: format!("h{line}"),
        prompt: serde_json::json!([{"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": question}])
        .to_string(),
        output: Some(output),
        reference: Some(reference.into()),
        score: Some(score),
        pass: Some(pass),
        verdicts: verdict.to_string(),
        reason: reason.map(|r| format!("contains: {r}")),
        latency_s: Some(if local { 0.4 } else { 1.2 } + line as f64 / 100.0),
        ttft_s: Some(0.1),
        prompt_tokens: Some(20),
        completion_tokens: Some(8),
        cost_usd: (!local).then_some(0.0004),
        compute_s: local.then_some(0.3),
        finish_reason: Some("stop".into()),
        attempts: 1,
        ..Default::default()
    };
    if matches!(did, Error) {
        r.output = None;
        r.score = None;
        r.pass = None;
        r.verdicts = "[]".into();
        r.reason = None;
        r.error = Some("HTTP 503 after 3 attempts".into());
    }
    r
}

/// A run folder's `eval/`, as `switchyard eval` leaves it, from `rows`.
fn write_eval(run: &Path, rows: &[ResultRow]) {
    let eval = run.join("eval");
    std::fs::create_dir_all(&eval).unwrap();
    std::fs::write(eval.join("results.jsonl"), results::jsonl(rows)).unwrap();
    let summary = results::summarize(rows);
    let names: Vec<String> = TARGETS.iter().map(|t| t.to_string()).collect();
    results::write_outputs(&eval, rows, &summary, &results::compare(rows, &names)).unwrap();
    let targets: Vec<serde_json::Value> = TARGETS
        .iter()
        .map(|t| match *t {
            "hosted" => serde_json::json!({"spec": {"name": t, "provider": "openai-compatible",
                "model": "hosted-model", "base_url": "http://127.0.0.1:9/v1", "price_in": 1.0, "price_out": 2.0}}),
            _ => serde_json::json!({"spec": {"name": t, "provider": "local", "model": "default"}}),
        })
        .collect();
    std::fs::write(
        eval.join("run.json"),
        serde_json::json!({ "targets": targets }).to_string(),
    )
    .unwrap();
}

/// A fresh folder under the test's output folder, kept after the test for a person to open.
fn out_dir(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("report")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn chromium(args: &[&str], page: &Path, fragment: &str) -> String {
    let out = std::process::Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu"])
        .args(args)
        .arg(format!("file://{}{fragment}", page.display()))
        .output()
        .expect("chromium (apt-get install chromium; .ci/run installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The page after its scripts ran, with the filters of `fragment` (`#status=fail`).
fn dom(page: &Path, fragment: &str) -> String {
    chromium(
        &["--virtual-time-budget=5000", "--dump-dom"],
        page,
        fragment,
    )
}

/// A `data-NAME="VALUE"` attribute of the rendered page's body.
fn body_data(dom: &str, name: &str) -> String {
    let key = format!("data-{name}=\"");
    let at = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no {key} in the page: {}", &dom[..dom.len().min(600)]));
    dom[at + key.len()..].split('"').next().unwrap().to_string()
}

/// A screenshot of the page (with `fragment`) in a window `height` pixels tall into `png`; it
/// must be a real picture.
fn screenshot(page: &Path, fragment: &str, height: u32, png: &Path) {
    let arg = format!("--screenshot={}", png.display());
    let size = format!("--window-size=1400,{height}");
    chromium(&[&arg, &size], page, fragment);
    let bytes = std::fs::read(png).expect("chromium wrote the screenshot");
    assert!(
        bytes.starts_with(b"\x89PNG"),
        "{} is not a PNG",
        png.display()
    );
    // A blank 1400×2000 page compresses to a few kilobytes; tables, colours and text do not.
    assert!(
        bytes.len() > 60_000,
        "{}: {} bytes, nearly blank",
        png.display(),
        bytes.len()
    );
    eprintln!("screenshot: {}", png.display());
}

#[test]
fn the_report_shows_every_output_side_by_side_with_filters_heat_map_and_evidence() {
    let out = out_dir("matrix");
    let run = out.join("run");
    let rows: Vec<ResultRow> = (0..CASES.len())
        .flat_map(|i| {
            TARGETS
                .iter()
                .zip(CASES[i].5)
                .map(move |(t, did)| row(i, t, did))
        })
        .collect();
    write_eval(&run, &rows);
    cli_ok(
        in_dir(&out)
            .args(["route", "derive"])
            .arg(run.join("eval"))
            .args([
                "--out",
                "run/policy.json",
                "--min-cases",
                "1",
                "--holdout",
                "0.3",
                "--machine-price-per-hour",
                "0.5",
                "--machine-tokens-per-s",
                "200",
            ]),
    );
    cli_ok(in_dir(&out).arg("report").arg(&run));
    let page = run.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();

    // Self-contained, and no output became markup.
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
    assert!(!html.contains("<img") && !html.contains("pwned=1</script>"));
    // The evidence as tables, read from the policy: one per route, and the held-out validation.
    let policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("policy.json")).unwrap()).unwrap();
    let routes = policy["routes"].as_array().unwrap();
    assert!(routes.len() >= 3, "{policy}");
    assert_eq!(
        html.matches("<table class=\"styled evidence-task\">")
            .count(),
        routes.len()
    );
    assert!(!html.contains("<pre># Routing policy"), "raw Markdown");
    for caption in [
        "Predicted on the suites&#39; own cases",
        "Validated out of sample (holdout 0.3",
        "Self-hosting economics</h3>",
    ] {
        assert!(html.contains(caption), "{caption}");
    }
    assert!(html.contains("<tr class=\"primary\"><td>"));
    // The heat map: (2 suites + 2 tags) × 3 targets, each with its interval; `python` covers
    // all of `code` and is named beside it.
    assert_eq!(html.matches("class=\"hm-cell\"").count(), 12);
    assert!(html.contains("<th>code (python)</th>") && !html.contains("<th>python</th>"));
    let geo_base = html
        .split("<th>geo</th>")
        .nth(1)
        .and_then(|s| s.split("</td>").next())
        .unwrap();
    // base passes 1 of 3 geo cases: 33.3%, an interval around it, coloured by the score.
    assert!(
        geo_base.contains("data-score=\"0.3333\"")
            && geo_base.contains("<b>33.3</b>")
            && geo_base.contains("class=\"ci\""),
        "{geo_base}"
    );

    // Rendered: every case, every answer with its badge, the scorers' reasons, the hostile
    // output as text.
    let all = dom(&page, "");
    assert_eq!(body_data(&all, "matrix-total"), "10");
    assert_eq!(body_data(&all, "matrix-rendered"), "10");
    assert!(all.contains("showing 10 of 10 cases"));
    for (badge, n) in [("pass", 22), ("fail", 7), ("error", 1)] {
        assert_eq!(
            all.matches(&format!("class=\"badge {badge}\"")).count(),
            n,
            "{badge}"
        );
    }
    assert!(all.contains("contains 0.00 · expected \"Canberra\""));
    assert!(all.contains("contains 1.00 · read “Paris”"));
    assert!(all.contains("HTTP 503 after 3 attempts"));
    assert!(all.contains("&lt;/script&gt;&lt;script&gt;document.body.dataset.pwned=1"));
    assert!(all.contains("Who wrote &lt;b&gt;Beowulf&lt;/b&gt;?"));
    assert!(!all.contains("data-pwned"), "an output ran as script");
    assert!(
        body_data(&all, "plots-rendered").parse::<usize>().unwrap() >= 3,
        "quality/cost ×2, latency"
    );

    // Filters, from the address as a person would share them.
    for (fragment, shown) in [
        ("#status=fail", 5),
        ("#status=pass", 5),
        ("#disagree=1", 4),
        ("#suite=code&disagree=1", 2),
        ("#tag=geo", 3),
        ("#tag=geo&status=pass", 1),
        ("#q=CANBERRA", 1),
    ] {
        let d = dom(&page, fragment);
        assert_eq!(
            body_data(&d, "matrix-shown"),
            shown.to_string(),
            "{fragment}"
        );
        assert_eq!(
            body_data(&d, "matrix-rendered"),
            shown.to_string(),
            "{fragment}"
        );
        assert!(
            d.contains(&format!("showing {shown} of 10 cases")),
            "{fragment}"
        );
    }

    // The top of the page; and all of it, down to the matrix filtered to disagreements.
    screenshot(&page, "", 2000, &out.join("report.png"));
    screenshot(&page, "#disagree=1", 4000, &out.join("matrix-disagree.png"));
}

#[test]
fn a_run_of_thousands_of_cases_renders_a_page_at_a_time() {
    let out = out_dir("large");
    let run = out.join("run");
    let n = 3000;
    let rows: Vec<ResultRow> = (0..n)
        .flat_map(|i| {
            TARGETS.iter().enumerate().map(move |(t, target)| {
                let did = if (i + t) % 3 == 0 { Fail } else { Pass };
                let mut r = row(i % CASES.len(), target, did);
                r.case_id = format!("case-{i}");
                r.line = i as u64;
                r
            })
        })
        .collect();
    write_eval(&run, &rows);
    cli_ok(in_dir(&out).arg("report").arg(&run));
    let page = run.join("report.html");
    let t0 = std::time::Instant::now();
    let all = dom(&page, "");
    assert_eq!(body_data(&all, "matrix-total"), n.to_string());
    assert_eq!(body_data(&all, "matrix-rendered"), "100");
    assert!(all.contains(&format!("showing {n} of {n} cases (first 100 listed)")));
    // Every case has targets that disagree (one of three fails): the filter finds them all.
    let d = dom(&page, "#disagree=1&suite=code");
    assert_eq!(body_data(&d, "matrix-shown"), (n * 4 / 10).to_string());
    eprintln!(
        "{} cases: {} bytes of HTML, two renders in {:.1} s",
        n,
        std::fs::metadata(&page).unwrap().len(),
        t0.elapsed().as_secs_f64()
    );
}
