//! Spec parsing: Bacalhau's example specs (reference §3.10) parse with Bacalhau's defaults, and bad
//! specs are refused with a message that names the field and says what is wrong.

use caravel_model::parse::{Mode, parse_job};
use caravel_model::states::JobStateType;

const DOCKER_S3: &str = include_str!("bacalhau-examples/docker-s3.yaml");

const DOCKER_OUTPUT: &str = include_str!("bacalhau-examples/docker-output.yaml");

const WASM_INLINE: &str = include_str!("bacalhau-examples/wasm-inline.yaml");

const DAEMON: &str = include_str!("bacalhau-examples/daemon.yaml");

const LOWERCASE: &str = r#"
name: lower
type: batch
count: 2
tasks:
  - name: main
    engine:
      type: wasm
      params: {entryModule: /m.wasm}
    inputSources:
      - target: /m.wasm
        source: {type: inline, params: {url: "data:,x"}}
    resources: {cpu: "1", memory: 2GiB}
"#;

const LEGACY_WASM: &str = r#"
Name: legacy
Type: batch
Tasks:
  - Name: main
    Engine:
      Type: wasm
      Params:
        EntryPoint: run
        EntryModule:
          Source: {Type: urlDownload, Params: {URL: "http://127.0.0.1:8000/main.wasm"}}
          Target: /app/main.wasm
"#;

#[test]
fn bacalhaus_example_specs_parse_with_bacalhaus_defaults() {
    let j = parse_job(DOCKER_S3.as_bytes(), Mode::Client).unwrap().job;
    assert_eq!(
        (j.kind.as_str(), j.count, j.namespace.as_str()),
        ("batch", 1, "default")
    );
    let t = &j.tasks[0];
    assert_eq!(t.engine.params.str("Image"), Some("busybox:1.37.0"));
    assert_eq!(
        t.input_sources[0].source.params.str("Bucket"),
        Some("my-bucket")
    );
    assert_eq!(
        t.publisher.kind, "local",
        "a job without a publisher keeps its results on the node"
    );
    assert_eq!(j.state.state_type, JobStateType::Undefined);

    let j = parse_job(DOCKER_OUTPUT.as_bytes(), Mode::Client)
        .unwrap()
        .job;
    let t = &j.tasks[0];
    assert_eq!(t.result_paths[0].path, "/output_custom");
    assert_eq!(
        (t.resources.cpu.as_str(), t.resources.memory.as_str()),
        ("500m", "512mb")
    );
    assert_eq!(
        (t.timeouts.execution_timeout, t.timeouts.queue_timeout),
        (300, 3600)
    );

    let j = parse_job(WASM_INLINE.as_bytes(), Mode::Client).unwrap().job;
    assert_eq!(j.count, 1, "Count defaults to 1 for batch jobs");
    assert_eq!(
        j.tasks[0].engine.params.str("EntryModule"),
        Some("/wasm.main")
    );

    let j = parse_job(DAEMON.as_bytes(), Mode::Client).unwrap().job;
    assert_eq!((j.kind.as_str(), j.count), ("daemon", 0));
    assert_eq!(j.constraints[0].values, vec!["eu"]);
    assert_eq!(j.tasks[0].env["API_KEY"], "env:API_KEY");
}

#[test]
fn keys_in_any_case_are_accepted() {
    let j = parse_job(LOWERCASE.as_bytes(), Mode::Client).unwrap().job;
    assert_eq!((j.name.as_str(), j.count), ("lower", 2));
    assert_eq!(j.tasks[0].resources.memory, "2gib");
    assert_eq!(
        j.tasks[0].input_sources[0].source.params.str("URL"),
        Some("data:,x")
    );
}

#[test]
fn json_specs_parse_like_yaml() {
    let json = r#"{"Name":"j","Type":"batch","Tasks":[{"Name":"main","Engine":{"Type":"wasm","Params":{"EntryModule":"/m"}},
      "InputSources":[{"Target":"/m","Source":{"Type":"inline","Params":{"URL":"data:,x"}}}]}]}"#;
    assert_eq!(
        parse_job(json.as_bytes(), Mode::Client).unwrap().job.name,
        "j"
    );
}

#[test]
fn the_legacy_wasm_form_is_converted_to_input_targets() {
    let p = parse_job(LEGACY_WASM.as_bytes(), Mode::Client).unwrap();
    let t = &p.job.tasks[0];
    assert_eq!(t.engine.params.str("EntryModule"), Some("/app/main.wasm"));
    assert_eq!(t.engine.params.str("Entrypoint"), Some("run"));
    assert_eq!(t.input_sources[0].source.kind, "urlDownload");
    assert!(!p.warnings.is_empty());
}

#[test]
fn an_explicit_count_of_zero_is_kept_for_batch_jobs() {
    let spec = WASM_INLINE.replace("Type: batch", "Type: batch\nCount: 0");
    assert_eq!(
        parse_job(spec.as_bytes(), Mode::Client).unwrap().job.count,
        0
    );
}

#[test]
fn the_server_drops_owned_fields_with_a_warning_and_the_client_refuses_them() {
    let spec = format!("ID: j-123\nVersion: 4\n{WASM_INLINE}");
    let p = parse_job(spec.as_bytes(), Mode::Server).unwrap();
    assert_eq!(p.job.version, 0);
    assert!(p.warnings.iter().any(|w| w.contains("ID")));
    let e = parse_job(spec.as_bytes(), Mode::Client)
        .unwrap_err()
        .to_string();
    assert!(e.contains("ID: is set by the orchestrator"), "{e}");
}

/// A valid wasm task to mutate.
fn wasm(task_extra: &str, job_extra: &str) -> String {
    format!(
        "Name: bad\nType: batch\n{job_extra}\nTasks:\n  - Name: main\n    Engine: {{Type: wasm, Params: {{EntryModule: /m.wasm}}}}\n    InputSources:\n      - Target: /m.wasm\n        Source: {{Type: inline, Params: {{URL: 'data:,x'}}}}\n{task_extra}"
    )
}

#[test]
fn bad_specs_are_refused_with_a_precise_message() {
    let big = format!(
        "Name: big\nMeta: {{blob: \"{}\"}}\nTasks: []\n",
        "x".repeat(9 << 20)
    );
    let cases: Vec<(String, &str)> = vec![
        (
            "Name: x\nType: batch\n".into(),
            "Tasks: a job needs one task and has none",
        ),
        ("Name: x\nTasks: []\n".into(), "Tasks: a job needs one task"),
        (
            wasm("", "").replace("Type: batch", "Type: cron"),
            "Type: unknown job type \"cron\"",
        ),
        (
            wasm("", "").replace("Type: wasm", "Type: dockr"),
            "Tasks[0].Engine.Type: unknown engine type \"dockr\"",
        ),
        (
            wasm("", "").replace(
                "Engine: {Type: wasm, Params: {EntryModule: /m.wasm}}",
                "Engine: {Params: {}}",
            ),
            "Tasks[0].Engine.Type: is empty",
        ),
        (
            "Name: x\nTasks:\n  - Name: main\n    Engine: {Type: docker, Params: {}}\n".into(),
            "Tasks[0].Engine.Params.Image: is required for docker jobs",
        ),
        (
            "Name: x\nTasks:\n  - Name: main\n    Engine: {Type: docker, Params: {Image: '  '}}\n"
                .into(),
            "Image: is required",
        ),
        (
            wasm("", "").replace("EntryModule: /m.wasm", "EntryModule: ''"),
            "Tasks[0].Engine.Params.EntryModule: is required for wasm jobs",
        ),
        (
            wasm("", "").replace("EntryModule: /m.wasm", "EntryModule: /other.wasm"),
            "\"/other.wasm\" is neither the Target of an InputSource nor a file below one",
        ),
        (
            wasm("    Publisher: {Type: ftp}\n", ""),
            "Tasks[0].Publisher.Type: unknown publisher type \"ftp\"",
        ),
        (
            wasm("", "").replace("Type: inline", "Type: gopher"),
            "Tasks[0].InputSources[0].Source.Type: unknown input source type \"gopher\"",
        ),
        (
            wasm("    Resources: {CPU: lots}\n", ""),
            "Tasks[0].Resources.CPU: \"lots\" is not a CPU quantity",
        ),
        (
            wasm("    Resources: {Memory: 1Zb}\n", ""),
            "Tasks[0].Resources.Memory: \"1zb\" has an unknown unit",
        ),
        (
            wasm("    Resources: {Disk: big}\n", ""),
            "Tasks[0].Resources.Disk: \"big\" is not a size",
        ),
        (
            wasm("    Resources: {GPU: one}\n", ""),
            "Tasks[0].Resources.GPU: \"one\" is not a GPU count",
        ),
        (
            wasm("    ResultPaths: [{Name: out, Path: outputs}]\n", ""),
            "Tasks[0].ResultPaths[0].Path: \"outputs\" is not an absolute path",
        ),
        (
            wasm(
                "    ResultPaths: [{Name: a, Path: /o}, {Name: a, Path: /p}]\n",
                "",
            ),
            "Tasks[0].ResultPaths[1].Name: duplicate result name \"a\"",
        ),
        (
            wasm(
                "    ResultPaths: [{Name: a, Path: /o}, {Name: b, Path: /o/}]\n",
                "",
            ),
            "Tasks[0].ResultPaths[1].Path: duplicate result path",
        ),
        (
            wasm("    ResultPaths: [{Name: stdout, Path: /o}]\n", ""),
            "cannot be used as a result name",
        ),
        (
            wasm("", "")
                .replace("Target: /m.wasm", "Target: /inputs/../etc/m.wasm")
                .replace("EntryModule: /m.wasm", "EntryModule: /inputs/../etc/m.wasm"),
            "Tasks[0].InputSources[0].Target: \"/inputs/../etc/m.wasm\" contains '..'",
        ),
        (
            wasm(
                "      - Target: /m.wasm\n        Source: {Type: inline, Params: {URL: 'data:,y'}}\n",
                "",
            ),
            "Tasks[0].InputSources[1].Target: duplicate target \"/m.wasm\"",
        ),
        (
            wasm("    Env: {BACALHAU_JOB_ID: x}\n", ""),
            "Tasks[0].Env.BACALHAU_JOB_ID: names starting with BACALHAU_ are reserved",
        ),
        (
            wasm("    Env: {lower: x}\n", ""),
            "Tasks[0].Env.lower: is not a valid variable name",
        ),
        (
            wasm("    Env: {EMPTY: ''}\n", ""),
            "Tasks[0].Env.EMPTY: has an empty value",
        ),
        (
            wasm("    Timeouts: {ExecutionTimeout: -1}\n", ""),
            "Tasks[0].Timeouts.ExecutionTimeout: -1 is negative",
        ),
        (
            wasm(
                "    Timeouts: {ExecutionTimeout: 50, QueueTimeout: 60, TotalTimeout: 100}\n",
                "",
            ),
            "exceed TotalTimeout (100)",
        ),
        (
            wasm("    Network: {Type: Internet}\n", ""),
            "Tasks[0].Network.Type: unknown network type \"Internet\"",
        ),
        (
            wasm("    Network: {Type: None, Domains: [example.org]}\n", ""),
            "Domains: are only allowed with network type HTTP",
        ),
        (wasm("", "Count: -2"), "Count: -2 is negative"),
        (
            wasm("", "Meta: {caravel.io/disconnect-grace: ten minutes}"),
            "Meta[caravel.io/disconnect-grace]: \"ten minutes\" is not a duration",
        ),
        (
            wasm("", "Meta: {caravel.io/disconnect-grace: 10d}"),
            "has an unknown unit \"d\"",
        ),
        (
            wasm("", "Meta: {caravel.io/disconnect-grace: 200h}"),
            "is longer than the limit of 7 days",
        ),
        (
            wasm("", "Meta: {caravel.io/update-max-parallel: all}"),
            "Meta[caravel.io/update-max-parallel]: \"all\" is not a number of copies from 0 to 10000",
        ),
        (
            wasm("", "Meta: {caravel.io/update-min-healthy: 2h}"),
            "Meta[caravel.io/update-min-healthy]: \"2h\" is longer than the limit of 1h",
        ),
        (
            wasm("", "").replace("Type: batch", "Type: ops\nCount: 3"),
            "Count: 3 is not allowed for ops jobs",
        ),
        (
            wasm(
                "",
                "Constraints: [{Key: region, Operator: '~', Values: [eu]}]",
            ),
            "Constraints[0].Operator: unknown operator \"~\"",
        ),
        (
            wasm("", "Constraints: [{Key: region, Operator: in}]"),
            "Constraints[0].Values: operator in needs at least one value",
        ),
        (
            wasm(
                "",
                "Constraints: [{Key: gpu, Operator: exists, Values: [x]}]",
            ),
            "operator exists takes no values",
        ),
        (
            wasm("", "").replace("URL: 'data:,x'", "URL: 'http://x/m.wasm'"),
            "\"http://x/m.wasm\" is not a data: URL",
        ),
        (
            wasm("", "").replace(
                "Type: inline, Params: {URL: 'data:,x'}",
                "Type: urlDownload, Params: {URL: 'ftp://x'}",
            ),
            "\"ftp://x\" is not an http(s) URL",
        ),
        (
            wasm("", "").replace(
                "Type: inline, Params: {URL: 'data:,x'}",
                "Type: s3, Params: {Key: k}",
            ),
            "Source.Params.Bucket: is required for s3 sources",
        ),
        (
            wasm("", "").replace(
                "Type: inline, Params: {URL: 'data:,x'}",
                "Type: local, Params: {SourcePath: data}",
            ),
            "SourcePath: \"data\" is not an absolute path",
        ),
        (
            wasm("    Publisher: {Type: s3, Params: {Bucket: b}}\n", ""),
            "Tasks[0].Publisher.Params.Key: is required for the s3 publisher",
        ),
        (
            wasm("", "").replace("Engine:", "Engin:"),
            "Tasks[0].Engin: unknown field (hint: did you mean Engine?)",
        ),
        (
            wasm("", "Count: many"),
            "Count: invalid type: string \"many\"",
        ),
        ("Name: [unclosed\n".into(), "not valid YAML or JSON"),
        ("- just\n- a list\n".into(), "the spec must be a mapping"),
        ("".into(), "the spec is empty"),
        (big, "more than the limit of 8388608 bytes"),
    ];
    assert!(cases.len() >= 25);
    for (spec, want) in cases {
        let err = parse_job(spec.as_bytes(), Mode::Client)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "accepted".into());
        assert!(
            err.contains(want),
            "spec:\n{}\nwanted {want:?}\ngot: {err}",
            &spec[..spec.len().min(400)]
        );
        if err != "accepted" {
            assert!(
                err.contains("hint:") || want.contains("invalid type") || err.contains("YAML"),
                "every error has a hint: {err}"
            );
        }
    }
}

#[test]
fn the_disconnect_grace_period_is_read_from_meta_with_a_ten_minute_default() {
    use caravel_model::spec::{Job, parse_duration_secs};
    let mut job = Job::default();
    assert_eq!(job.disconnect_grace_ns(), 600 * 1_000_000_000);
    for (v, secs) in [
        ("90s", 90.0),
        ("10m", 600.0),
        ("1h30m", 5400.0),
        ("0s", 0.0),
        ("45", 45.0),
        ("1.5s", 1.5),
    ] {
        assert_eq!(parse_duration_secs(v), Ok(secs), "{v}");
        job.meta
            .insert("caravel.io/disconnect-grace".into(), v.into());
        assert_eq!(job.disconnect_grace_ns(), (secs * 1e9) as i64, "{v}");
    }
    for bad in ["", "m", "10x", "ten"] {
        assert!(parse_duration_secs(bad).is_err(), "{bad:?}");
    }
}

/// Jobs as Bacalhau's Go client and SDK marshal `models.Job` with `encoding/json`: every field
/// present, `null` for unset pointers, maps and slices, zero values for the server's fields, and
/// (in `go-client-newer.json`) keys a newer client knows and this server does not. Each parses in
/// both modes; the unknown keys come back as warnings naming them; zero values say nothing.
#[test]
fn jobs_as_the_go_client_marshals_them_parse_with_nulls_absent_and_unknown_keys_warned() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("@MODULE@", "data:application/wasm;base64,AGFzbQEAAAA=");
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        seen += 1;
        for mode in [Mode::Server, Mode::Client] {
            let p = parse_job(text.as_bytes(), mode)
                .unwrap_or_else(|e| panic!("{name} ({mode:?}): {e}"));
            assert_eq!(p.job.kind, "batch", "{name}");
            assert_eq!(p.job.tasks.len(), 1, "{name}");
            let unknown: Vec<&String> = p
                .warnings
                .iter()
                .filter(|w| w.contains("unknown field"))
                .collect();
            if name == "go-client-newer.json" {
                for key in [
                    "Schedule",
                    "Tasks[0].Affinity",
                    "Tasks[0].InputSources[0].Mount",
                ] {
                    assert!(
                        unknown
                            .iter()
                            .any(|w| w.starts_with(&format!("{key}: unknown field, ignored"))),
                        "{name}: {key} not warned: {:?}",
                        p.warnings
                    );
                }
                assert_eq!(unknown.len(), 3, "{:?}", p.warnings);
            } else {
                assert!(unknown.is_empty(), "{name}: {:?}", p.warnings);
            }
            assert!(
                !p.warnings
                    .iter()
                    .any(|w| w.contains("set by the orchestrator")),
                "zero values of server fields are not worth a warning: {:?}",
                p.warnings
            );
        }
    }
    assert_eq!(seen, 3, "the three fixtures of tests/compat");
}

#[test]
fn a_misspelt_required_key_is_named_beside_the_error_it_causes() {
    let spec = wasm("", "").replace("Engine:", "Engin:");
    let e = parse_job(spec.as_bytes(), Mode::Server)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Tasks[0].Engin: unknown field (hint: did you mean Engine?)"),
        "{e}"
    );
    // Accepted jobs keep their unknown keys as warnings, never as errors.
    let spec = wasm("    Colour: blue\n", "");
    let p = parse_job(spec.as_bytes(), Mode::Client).unwrap();
    assert_eq!(
        p.warnings,
        vec![
            "Tasks[0].Colour: unknown field, ignored (remove it; see the job spec reference in docs/)"
        ]
    );
}

#[test]
fn a_relative_wasm_entry_module_is_read_from_the_root_of_the_inputs() {
    // Bacalhau's testdata/jobs/wasm.yaml names its module relative to the task's root.
    let spec = r#"
Name: Wasm relative
Type: batch
Tasks:
  - Name: main
    Engine: {Type: wasm, Params: {EntryModule: wasm.main, ImportModules: [lib/helper.wasm]}}
    InputSources:
      - Target: /wasm.main
        Source: {Type: inline, Params: {URL: "data:,x"}}
      - Target: /lib
        Source: {Type: s3, Params: {Bucket: b, Key: libs/}}
"#;
    let p = parse_job(spec.as_bytes(), Mode::Client).unwrap();
    let params = &p.job.tasks[0].engine.params;
    assert_eq!(params.str("EntryModule"), Some("/wasm.main"));
    assert_eq!(
        params.get("ImportModules"),
        Some(&serde_json::json!(["/lib/helper.wasm"]))
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("read as \"/wasm.main\"")),
        "{:?}",
        p.warnings
    );
    // A module that no input holds is still refused, naming it.
    let e = parse_job(
        spec.replace("EntryModule: wasm.main", "EntryModule: other.wasm")
            .as_bytes(),
        Mode::Client,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("\"other.wasm\" is neither the Target of an InputSource"),
        "{e}"
    );
}

#[test]
fn publishers_and_networks_caravel_does_not_offer_are_refused_at_submit_with_the_reason() {
    for (extra, want) in [
        (
            "    Publisher: {Type: s3managed}\n",
            "Tasks[0].Publisher.Type: the s3managed publisher is not supported",
        ),
        (
            "    Publisher: {Type: ipfs}\n",
            "Tasks[0].Publisher.Type: the ipfs publisher is not supported",
        ),
        (
            "    Network: {Type: HTTP, Domains: [example.org]}\n",
            "Tasks[0].Network.Type: HTTP (outbound HTTP to listed Domains only) is not supported",
        ),
        (
            "    Network: {Type: None, Ports: [{Name: web, Target: 8080}]}\n",
            "Tasks[0].Network.Ports[0]: ports need a network",
        ),
        (
            "    Network: {Type: Bridge, Ports: [{Name: web, Static: 80}]}\n",
            "Tasks[0].Network.Ports[0].Static: 80 is a privileged port",
        ),
        (
            "    Network: {Type: Bridge, Ports: [{Name: web}, {Name: WEB}]}\n",
            "Tasks[0].Network.Ports[1].Name: \"WEB\" is used by another port",
        ),
        (
            "    Network: {Type: Bridge, Ports: [{Name: \"1st\"}]}\n",
            "Tasks[0].Network.Ports[0].Name: \"1st\" is not a port name",
        ),
    ] {
        let e = parse_job(wasm(extra, "").as_bytes(), Mode::Server)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want) && e.contains("hint:"), "{e}");
    }
    parse_job(
        wasm("    Network: {Type: Bridge, Ports: [{Name: web, Target: 8080}, {Name: api, Static: 9000}]}\n", "").as_bytes(),
        Mode::Server,
    )
    .unwrap();
    // s3PreSigned inputs are accepted with their URL, refused without one.
    let ok = wasm(
        "",
        "",
    )
    .replace(
        "InputSources:\n",
        "InputSources:\n      - Target: /in\n        Source: {Type: s3PreSigned, Params: {PreSignedURL: 'https://b.s3.example/k?X-Amz-Signature=1', SourceSpec: {Bucket: b, Key: k}}}\n",
    );
    parse_job(ok.as_bytes(), Mode::Server).unwrap();
    let e = parse_job(
        ok.replace(
            "PreSignedURL: 'https://b.s3.example/k?X-Amz-Signature=1', ",
            "",
        )
        .as_bytes(),
        Mode::Server,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("PreSignedURL: is required for s3PreSigned sources"),
        "{e}"
    );
}
