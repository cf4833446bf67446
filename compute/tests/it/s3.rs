//! S3 inputs and the S3 publisher against a real S3-compatible server (moto_server), named by
//! `CARAVEL_TEST_S3_ENDPOINT` (scripts/test.sh starts one). These tests fail, saying so, without it.
//! Buckets and objects are set up and checked with plain HTTP requests, not with the code under
//! test.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use caravel_compute::publish::{PublishContext, from_spec, publish, render_key};
use caravel_compute::{ExecutionPaths, InputError, InputOptions, InputPreparer, S3Settings};
use caravel_model::ExecutionStateType;
use caravel_model::spec::{ResultPath, SpecConfig};
use sha2::Digest;

use crate::support::*;

fn endpoint() -> String {
    std::env::var("CARAVEL_TEST_S3_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .unwrap_or_else(|| {
            panic!(
                "the s3 tests need an S3-compatible server: set CARAVEL_TEST_S3_ENDPOINT=http://127.0.0.1:PORT \
                 (scripts/test.sh starts moto_server; by hand: moto_server -H 127.0.0.1 -p 5000)"
            )
        })
        .trim_end_matches('/')
        .to_string()
}

/// The node's S3 settings in these tests: moto's credentials, its loopback endpoints allowed.
fn settings() -> S3Settings {
    S3Settings {
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        region: Some("us-east-1".into()),
        allowed_endpoints: vec!["http://127.0.0.1:*".into()],
        ..Default::default()
    }
}

fn http() -> reqwest::Client {
    install_crypto();
    reqwest::Client::new()
}

/// A fresh bucket (moto accepts unsigned requests).
async fn bucket() -> String {
    let name = unique("caravel").to_ascii_lowercase();
    let r = http()
        .put(format!("{}/{name}", endpoint()))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach the S3 server at {} (CARAVEL_TEST_S3_ENDPOINT): {e}",
                endpoint()
            )
        });
    assert!(
        r.status().is_success(),
        "creating bucket {name}: {}",
        r.status()
    );
    name
}

async fn put(bucket: &str, key: &str, body: &[u8]) {
    let r = http()
        .put(format!("{}/{bucket}/{key}", endpoint()))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "put {key}: {}", r.status());
}

/// A signed client for reading back (moto refuses anonymous reads of objects).
fn reader(bucket: &str) -> object_store::aws::AmazonS3 {
    install_crypto();
    object_store::aws::AmazonS3Builder::new()
        .with_endpoint(endpoint())
        .with_allow_http(true)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap()
}

async fn get(bucket: &str, key: &str) -> Option<Vec<u8>> {
    use object_store::ObjectStoreExt;
    match reader(bucket)
        .get(&object_store::path::Path::from(key))
        .await
    {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("reading s3://{bucket}/{key}: {e}"),
    }
}

/// Keys in `bucket` under `prefix`.
async fn keys(bucket: &str, prefix: &str) -> Vec<String> {
    use futures::TryStreamExt;
    use object_store::ObjectStore;
    let prefix = object_store::path::Path::from(prefix);
    let mut out: Vec<String> = reader(bucket)
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    out.sort();
    out
}

fn preparer() -> InputPreparer {
    InputPreparer::new(InputOptions {
        s3: settings(),
        ..Default::default()
    })
    .unwrap()
}

fn s3_input(
    bucket: &str,
    key: &str,
    extra: &[(&str, serde_json::Value)],
) -> caravel_model::spec::InputSource {
    let mut params = vec![
        ("Bucket", bucket.into()),
        ("Key", key.into()),
        ("Endpoint", endpoint().into()),
    ];
    params.extend(extra.iter().cloned());
    input("s3", "/inputs/data", &params)
}

fn files_under(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        if e.file_type().unwrap().is_dir() {
            files_under(&e.path(), &format!("{name}/"), out);
        } else {
            out.push((name, std::fs::read_to_string(e.path()).unwrap()));
        }
    }
}

#[tokio::test]
async fn an_object_input_becomes_a_directory_holding_it_by_name_and_its_checksum_is_verified() {
    let b = bucket().await;
    put(&b, "dir/hello.txt", b"hello s3\n").await;
    let dir = tempfile::tempdir().unwrap();
    let p = preparer();
    let got = p
        .prepare_one(&s3_input(&b, "dir/hello.txt", &[]), &dir.path().join("0"))
        .await
        .unwrap();
    assert!(got.read_only);
    assert_eq!(got.target, "/inputs/data");
    // As Bacalhau mounts it: a directory at the target, the object in it by its name.
    assert!(got.host_path.is_dir());
    assert_eq!(
        std::fs::read(got.host_path.join("hello.txt")).unwrap(),
        b"hello s3\n"
    );

    let sum = sha2::Sha256::digest(b"hello s3\n");
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, sum);
    let ok = s3_input(&b, "dir/hello.txt", &[("ChecksumSHA256", b64.into())]);
    p.prepare_one(&ok, &dir.path().join("1")).await.unwrap();
    let bad = s3_input(
        &b,
        "dir/hello.txt",
        &[(
            "ChecksumSHA256",
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".into(),
        )],
    );
    let e = p
        .prepare_one(&bad, &dir.path().join("2"))
        .await
        .unwrap_err();
    assert!(matches!(e, InputError::ChecksumMismatch { .. }), "{e}");
    assert!(e.to_string().contains("not the ChecksumSHA256"), "{e}");
    assert!(
        !dir.path().join("2/data").exists(),
        "a rejected object is not left behind"
    );
}

#[tokio::test]
async fn a_prefix_input_becomes_a_directory_filtered_by_regex() {
    let b = bucket().await;
    put(&b, "data/a.txt", b"A").await;
    put(&b, "data/sub/b.txt", b"B").await;
    put(&b, "data/c.csv", b"C").await;
    put(&b, "data-2/d.txt", b"D").await;
    put(&b, "other/x.txt", b"X").await;
    let dir = tempfile::tempdir().unwrap();
    let p = preparer();

    let got = p
        .prepare_one(&s3_input(&b, "data/", &[]), &dir.path().join("0"))
        .await
        .unwrap();
    let mut files = Vec::new();
    files_under(&got.host_path, "", &mut files);
    assert_eq!(
        files,
        vec![
            ("a.txt".to_string(), "A".to_string()),
            ("c.csv".into(), "C".into()),
            ("sub/b.txt".into(), "B".into()),
        ]
    );

    let got = p
        .prepare_one(
            &s3_input(&b, "data/", &[("Filter", r".*\.txt$".into())]),
            &dir.path().join("1"),
        )
        .await
        .unwrap();
    let mut files = Vec::new();
    files_under(&got.host_path, "", &mut files);
    let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["a.txt", "sub/b.txt"]);

    // A key that is no object is a prefix of every key that starts with it.
    let got = p
        .prepare_one(&s3_input(&b, "data", &[]), &dir.path().join("2"))
        .await
        .unwrap();
    let mut files = Vec::new();
    files_under(&got.host_path, "", &mut files);
    let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec!["data/a.txt", "data/c.csv", "data/sub/b.txt", "data-2/d.txt"]
    );
}

/// Each execution of a partitioned S3 input holds exactly its share of the objects, as Bacalhau
/// splits them: every case of the model's fixture (`model/tests/partition/expected.json`, the
/// partitions Bacalhau's own hashing gives each key), fetched from a real S3 server per partition.
#[tokio::test]
async fn each_partition_of_an_s3_input_holds_exactly_the_objects_bacalhau_gives_it() {
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/tests/partition/expected.json"),
    )
    .expect("the partition fixture");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&fixture).unwrap();
    let b = bucket().await;
    let mut keys: Vec<String> = cases[0]["Expected"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    keys.sort();
    for k in &keys {
        put(&b, k, k.as_bytes()).await;
    }
    let p = preparer();
    let dir = tempfile::tempdir().unwrap();
    for (c, case) in cases.iter().enumerate() {
        let count = case["Count"].as_u64().unwrap() as usize;
        let prefix = case["Key"].as_str().unwrap();
        let rule = case["Partition"].clone();
        let mut seen = Vec::new();
        for index in 0..count {
            let input = s3_input(&b, prefix, &[("Partition", rule.clone())]);
            let got = p
                .prepare_part(
                    &input,
                    &dir.path().join(format!("{c}-{index}")),
                    (index, count),
                )
                .await
                .unwrap_or_else(|e| panic!("case {c} ({rule}) partition {index}: {e}"));
            let mut files = Vec::new();
            files_under(&got.host_path, "", &mut files);
            // Objects sit under their key relative to the prefix; each holds its own key.
            let mut held: Vec<String> = files.into_iter().map(|(_, body)| body).collect();
            held.sort();
            let mut want: Vec<String> = case["Expected"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, i)| k.starts_with(prefix) && i.as_u64() == Some(index as u64))
                .map(|(k, _)| k.clone())
                .collect();
            want.sort();
            assert_eq!(
                held, want,
                "case {c} ({rule}), partition {index} of {count}"
            );
            seen.extend(held);
        }
        seen.sort();
        let all: Vec<&String> = keys.iter().filter(|k| k.starts_with(prefix)).collect();
        assert_eq!(
            seen.iter().collect::<Vec<_>>(),
            all,
            "case {c}: every object in exactly one partition"
        );
    }
}

/// An `s3PreSigned` input: a URL signed by someone holding the credentials, fetched as a URL
/// (the node's own credentials unused), laid out as an s3 input: a directory at `Target` holding
/// the object under the name of `SourceSpec.Key`.
#[tokio::test]
async fn a_presigned_input_is_fetched_with_its_signature_into_a_directory_as_an_s3_input() {
    use object_store::signer::Signer;
    let b = bucket().await;
    put(&b, "dir/signed.txt", b"signed s3\n").await;
    let url = reader(&b)
        .signed_url(
            reqwest::Method::GET,
            &object_store::path::Path::from("dir/signed.txt"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    assert!(
        url.query().is_some_and(|q| q.contains("X-Amz-Signature")),
        "{url}"
    );
    let input = input(
        "s3PreSigned",
        "/inputs",
        &[
            ("PreSignedURL", url.to_string().into()),
            (
                "SourceSpec",
                serde_json::json!({"Bucket": b, "Key": "dir/signed.txt"}),
            ),
        ],
    );
    // The node knows no S3 credentials at all, and may fetch from loopback (the test server).
    let p = InputPreparer::new(InputOptions {
        allow_private: vec!["127.0.0.1".into(), "localhost".into()],
        ..Default::default()
    })
    .unwrap();
    assert!(p.supported_sources().contains(&"s3PreSigned".to_string()));
    let dir = tempfile::tempdir().unwrap();
    let got = p.prepare_one(&input, &dir.path().join("0")).await.unwrap();
    let mut files = Vec::new();
    files_under(&got.host_path, "", &mut files);
    assert_eq!(
        files,
        [("signed.txt".to_string(), "signed s3\n".to_string())]
    );
    assert!(got.read_only);
}

#[tokio::test]
async fn missing_buckets_and_keys_are_named_with_a_hint() {
    let b = bucket().await;
    put(&b, "present.txt", b"x").await;
    let dir = tempfile::tempdir().unwrap();
    let p = preparer();
    let e = p
        .prepare_one(
            &s3_input("caravel-no-such-bucket", "k.txt", &[]),
            &dir.path().join("0"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "s3 input: bucket \"caravel-no-such-bucket\" does not exist at {}; check Bucket, Endpoint and Region",
            endpoint()
        )
    );
    let e = p
        .prepare_one(&s3_input(&b, "absent.txt", &[]), &dir.path().join("1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!("s3 input: no object s3://{b}/absent.txt")),
        "{e}"
    );
    assert!(e.contains("check Key"), "{e}");
    let e = p
        .prepare_one(&s3_input(&b, "nothing/", &[]), &dir.path().join("2"))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains(&format!("no object s3://{b}/nothing/")), "{e}");
    let e = p
        .prepare_one(
            &input("s3", "/inputs/x", &[("Key", "k".into())]),
            &dir.path().join("3"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "s3 input: Bucket is required for s3 sources; set Bucket");
}

/// A private moto_server that checks credentials (`INITIAL_NO_AUTH_ACTION_COUNT=0`), so no key is
/// valid until an IAM user is made; killed when dropped.
struct AuthMoto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for AuthMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto_with_auth() -> AuthMoto {
    let bin = std::env::var("CARAVEL_TEST_MOTO_SERVER").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "this test starts its own moto_server ({bin}) with authentication on: {e}; \
                 install it with pip install 'moto[server]' or set CARAVEL_TEST_MOTO_SERVER"
            )
        });
    let moto = AuthMoto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "moto_server did not listen on port {port} within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    moto
}

#[tokio::test]
async fn wrong_credentials_are_reported_with_a_hint() {
    let moto = moto_with_auth().await;
    let dir = tempfile::tempdir().unwrap();
    let p = InputPreparer::new(InputOptions {
        s3: S3Settings {
            access_key_id: Some("AKIAWRONGWRONGWRONG1".into()),
            secret_access_key: Some("wrong".into()),
            allowed_endpoints: vec!["http://127.0.0.1:*".into()],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let inp = input(
        "s3",
        "/inputs/x",
        &[
            ("Bucket", "secure".into()),
            ("Key", "k.txt".into()),
            ("Endpoint", moto.endpoint.clone().into()),
        ],
    );
    let e = p
        .prepare_one(&inp, dir.path())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "s3 input: access to s3://secure/k.txt at {} was refused (InvalidAccessKeyId)",
            moto.endpoint
        )),
        "{e}"
    );
    assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
}

/// An execution's results dir with the Bacalhau layout.
fn results(dir: &Path) -> ExecutionPaths {
    let paths = ExecutionPaths::new(dir, "e-pub");
    paths.create().unwrap();
    std::fs::write(paths.stdout(), "out\n").unwrap();
    std::fs::write(paths.stderr(), "").unwrap();
    paths.write_exit_code(0).unwrap();
    std::fs::create_dir_all(paths.result_dir("outputs").join("sub")).unwrap();
    std::fs::write(paths.result_dir("outputs").join("a.txt"), "A").unwrap();
    std::fs::write(paths.result_dir("outputs").join("sub/b.txt"), "B").unwrap();
    paths
}

fn untar(gz: &[u8]) -> Vec<(String, String)> {
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let mut out = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.header().entry_type().is_file() {
            let mut s = String::new();
            e.read_to_string(&mut s).unwrap();
            out.push((e.path().unwrap().display().to_string(), s));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_s3_publisher_uploads_one_archive_or_plain_files_under_the_templated_key() {
    let b = bucket().await;
    let s = settings();
    let now = std::time::SystemTime::now();
    let date = render_key("{date}", "", "", "", now);

    let dir = tempfile::tempdir().unwrap();
    let paths = results(dir.path());
    let ctx = PublishContext {
        paths: &paths,
        execution_id: "e-pub",
        job_id: "j-pub",
        node_id: "n-pub",
        s3: &s,
        now,
    };
    let gz = from_spec(
        &SpecConfig::new("s3")
            .with("Bucket", b.as_str())
            .with("Key", "runs/{jobID}/{date}/")
            .with("Endpoint", endpoint()),
    )
    .unwrap();
    let published = publish(&gz, &ctx).await.unwrap();
    let key = format!("runs/j-pub/{date}/e-pub.tar.gz");
    let spec = published.result.unwrap();
    assert_eq!(spec.kind, "s3");
    assert_eq!(spec.params.str("Bucket"), Some(b.as_str()));
    assert_eq!(spec.params.str("Key"), Some(key.as_str()));
    assert_eq!(spec.params.str("Endpoint"), Some(endpoint().as_str()));
    assert_eq!(spec.params.str("Region"), Some("us-east-1"));
    assert_eq!(spec.params.str("Encoding"), Some("gzip"));
    let archive = get(&b, &key).await.expect("the archive is in the bucket");
    assert_eq!(published.bytes, archive.len() as u64);
    assert_eq!(
        untar(&archive),
        vec![
            ("exitCode".to_string(), "0".to_string()),
            ("outputs/a.txt".into(), "A".into()),
            ("outputs/sub/b.txt".into(), "B".into()),
            ("stderr".into(), "".into()),
            ("stdout".into(), "out\n".into()),
        ]
    );
    assert!(
        !paths.result_dir("outputs").exists() && paths.stdout().exists(),
        "only the logs stay on the node"
    );

    let dir = tempfile::tempdir().unwrap();
    let paths = results(dir.path());
    let ctx = PublishContext {
        paths: &paths,
        ..ctx
    };
    let plain = from_spec(
        &SpecConfig::new("s3")
            .with("Bucket", b.as_str())
            .with("Key", "plain/{nodeID}/{executionID}")
            .with("Encoding", "plain")
            .with("Endpoint", endpoint()),
    )
    .unwrap();
    let published = publish(&plain, &ctx).await.unwrap();
    let spec = published.result.unwrap();
    assert_eq!(spec.params.str("Key"), Some("plain/n-pub/e-pub/"));
    assert_eq!(spec.params.str("Encoding"), Some("plain"));
    assert_eq!(
        keys(&b, "plain/").await,
        vec![
            "plain/n-pub/e-pub/exitCode",
            "plain/n-pub/e-pub/outputs/a.txt",
            "plain/n-pub/e-pub/outputs/sub/b.txt",
            "plain/n-pub/e-pub/stderr",
            "plain/n-pub/e-pub/stdout",
        ]
    );
    assert_eq!(
        get(&b, "plain/n-pub/e-pub/outputs/sub/b.txt")
            .await
            .unwrap(),
        b"B"
    );

    let missing = from_spec(
        &SpecConfig::new("s3")
            .with("Bucket", "caravel-no-such-bucket")
            .with("Key", "k.tar.gz")
            .with("Endpoint", endpoint()),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = results(dir.path());
    let e = publish(
        &missing,
        &PublishContext {
            paths: &paths,
            ..ctx
        },
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("bucket \"caravel-no-such-bucket\" does not exist"),
        "{e}"
    );
}

#[tokio::test]
async fn a_node_reads_s3_inputs_and_reports_its_s3_published_result() {
    let b = bucket().await;
    put(&b, "in/hello.txt", b"hello from s3\n").await;
    let mut h = start(|o, _| o.s3 = settings()).await;
    assert!(
        h.hello
            .compute_node_info
            .storage_sources
            .contains(&"s3".to_string())
    );
    assert!(
        h.hello
            .compute_node_info
            .publishers
            .contains(&"s3".to_string())
    );
    let mut task = wasm_task("echo", &[]);
    // As under Bacalhau: the Target is a directory holding the object by its name.
    task.input_sources.push(input(
        "s3",
        "/inputs",
        &[
            ("Bucket", b.as_str().into()),
            ("Key", "in/hello.txt".into()),
            ("Endpoint", endpoint().into()),
        ],
    ));
    task.result_paths.push(ResultPath {
        name: "outputs".into(),
        path: "/outputs".into(),
    });
    task.publisher = SpecConfig::new("s3")
        .with("Bucket", b.as_str())
        .with("Key", "results/{executionID}.tar.gz")
        .with("Endpoint", endpoint());
    let reports = h.run("e-s3-node", task).await;
    let end = last(&reports);
    assert_eq!(end.state, ExecutionStateType::Completed, "{}", end.message);
    assert!(states(&reports).contains(&ExecutionStateType::Publishing));
    let out = end.run_output.as_ref().unwrap();
    assert!(
        out.stdout
            .contains("input /inputs/hello.txt: hello from s3"),
        "{}",
        out.stdout
    );
    let spec = end.published_result.as_ref().expect("a published result");
    assert_eq!(spec.kind, "s3");
    assert_eq!(spec.params.str("Key"), Some("results/e-s3-node.tar.gz"));
    let archive = get(&b, "results/e-s3-node.tar.gz").await.unwrap();
    let names: Vec<String> = untar(&archive).into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        vec!["exitCode", "outputs/result.txt", "stderr", "stdout"]
    );
    let m = h.node.metrics();
    let mut reg = prometheus_client::registry::Registry::default();
    m.register(&mut reg);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    assert!(
        text.contains("compute_input_bytes_total{source=\"s3\"} 14"),
        "{text}"
    );
    assert!(text.contains("compute_publish_bytes_total{publisher=\"s3\"}"));
    h.shutdown.cancel();
    let _ = h.handle.await;
}

/// Abuse: a job naming an S3 endpoint the node does not allow is refused before any connection, so
/// the node's credentials never reach it (the listener below sees no one). Needs no S3 server.
#[tokio::test]
async fn an_endpoint_outside_the_allow_list_never_sees_the_credentials() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let trap = format!("http://{}", listener.local_addr().unwrap());
    let p = InputPreparer::new(InputOptions {
        s3: S3Settings {
            access_key_id: Some("AKIAEXAMPLE".into()),
            secret_access_key: Some("node-secret".into()),
            region: Some("us-east-1".into()),
            allowed_endpoints: vec!["http://minio.internal:9000".into()],
            ..Default::default()
        },
        ..InputOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let job_input = input(
        "s3",
        "/inputs/data",
        &[
            ("Bucket", "loot".into()),
            ("Key", "x".into()),
            ("Endpoint", trap.clone().into()),
        ],
    );
    let e = p
        .prepare_one(&job_input, &dir.path().join("0"))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&trap) && msg.contains("Compute.S3.AllowedEndpoints"),
        "{msg}"
    );
    assert!(!msg.contains("node-secret"), "{msg}");
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the endpoint was contacted: {other:?}"),
    }
}
