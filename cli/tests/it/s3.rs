//! `job get`'s S3 download against a real S3-compatible server (moto_server, started by
//! ./scripts/test.sh, which sets CARAVEL_TEST_S3_ENDPOINT and test credentials).

use std::path::Path;
use std::time::Duration;

use caravel_cli::results::S3Result;
use caravel_model::spec::SpecConfig;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

/// The server's URL; this suite does not pass silently without it.
fn s3_endpoint() -> String {
    match std::env::var("CARAVEL_TEST_S3_ENDPOINT") {
        Ok(e) if !e.is_empty() => e,
        _ => panic!(
            "CARAVEL_TEST_S3_ENDPOINT is not set: run ./scripts/test.sh (it starts moto_server)"
        ),
    }
}

fn tar_gz(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body.as_bytes()).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

fn read(dir: &Path, rel: &str) -> String {
    std::fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn result(bucket: &str, key: &str, endpoint: &str) -> S3Result {
    S3Result::from_spec(
        &SpecConfig::new("s3")
            .with("Bucket", bucket)
            .with("Key", key)
            .with("Endpoint", endpoint)
            .with("Region", "us-east-1"),
    )
    .unwrap()
}

#[tokio::test]
async fn job_get_lays_out_s3_archives_and_prefixes_like_local_results() {
    let endpoint = s3_endpoint();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let bucket = format!("caravel-get-{}-{nanos}", std::process::id());
    // Moto creates a bucket on an unsigned PUT; object_store has no bucket API.
    let status = reqwest::Client::new()
        .put(format!("{}/{bucket}", endpoint.trim_end_matches('/')))
        .send()
        .await
        .expect("the S3 server at CARAVEL_TEST_S3_ENDPOINT answers")
        .status();
    assert!(status.is_success(), "creating bucket {bucket}: {status}");
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(&bucket)
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_region("us-east-1")
        .build()
        .unwrap();
    let files = [
        ("stdout", "the 3\n"),
        ("stderr", ""),
        ("exitCode", "0"),
        ("outputs/counts.txt", "3 the\n"),
    ];
    let archive_key = "wordcount/j-1/e-1.tar.gz";
    store
        .put(
            &ObjectPath::from(archive_key),
            PutPayload::from(tar_gz(&files)),
        )
        .await
        .unwrap();
    for (name, body) in files {
        store
            .put(
                &ObjectPath::from(format!("plain/j-2/{name}")),
                PutPayload::from(body.as_bytes().to_vec()),
            )
            .await
            .unwrap();
    }
    let timeout = Duration::from_secs(30);
    let limits = caravel_model::archive::Limits::new(1 << 20);

    let gz_dir = tempfile::tempdir().unwrap();
    result(&bucket, archive_key, &endpoint)
        .download(gz_dir.path(), timeout, limits)
        .await
        .unwrap();
    let plain_dir = tempfile::tempdir().unwrap();
    result(&bucket, "plain/j-2/", &endpoint)
        .download(plain_dir.path(), timeout, limits)
        .await
        .unwrap();
    for dir in [gz_dir.path(), plain_dir.path()] {
        for (name, body) in files {
            assert_eq!(read(dir, name), body, "{name} in {}", dir.display());
        }
    }

    for (key, want) in [
        ("wordcount/j-1/gone.tar.gz", "is gone"),
        ("nothing/here/", "no objects under"),
    ] {
        let e = result(&bucket, key, &endpoint)
            .download(tempfile::tempdir().unwrap().path(), timeout, limits)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{key}: {e}");
    }
    // Results larger than --max-size are refused as they stream in, archive or plain.
    let tiny = caravel_model::archive::Limits::new(2);
    for key in [archive_key, "plain/j-2/"] {
        let e = result(&bucket, key, &endpoint)
            .download(tempfile::tempdir().unwrap().path(), timeout, tiny)
            .await
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains("raise --max-size"), "{key}: {e}");
    }
}
