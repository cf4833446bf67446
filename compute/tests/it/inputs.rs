//! Input preparation on its own: inline (plain, gzip), local with the allow-list, urlDownload.

use std::io::Write;

use caravel_compute::{InputError, InputOptions, InputPreparer};
use caravel_model::parse::inline_input;

use crate::support::{http_server, input, install_crypto, serve_paths, serve_typed};

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test]
async fn inline_inputs_decode_plain_percent_and_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let p = InputPreparer::new(InputOptions::default()).unwrap();
    let got = p
        .prepare_one(
            &inline_input("/inputs/a.txt", "text/plain", b"plain"),
            &dir.path().join("0"),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.host_path).unwrap(), b"plain");
    assert!(got.read_only);
    assert_eq!(got.target, "/inputs/a.txt");

    let gz = inline_input("/inputs/b.txt", "application/gzip", &gzip(b"unzipped"));
    let got = p.prepare_one(&gz, &dir.path().join("1")).await.unwrap();
    assert_eq!(std::fs::read(&got.host_path).unwrap(), b"unzipped");
    // Gzip is also recognised by its magic bytes.
    let gz = inline_input("/inputs/c.txt", "application/octet-stream", &gzip(b"magic"));
    let got = p.prepare_one(&gz, &dir.path().join("2")).await.unwrap();
    assert_eq!(std::fs::read(&got.host_path).unwrap(), b"magic");

    let pct = input(
        "inline",
        "/inputs/d.txt",
        &[("URL", "data:,hello%20world".into())],
    );
    let got = p.prepare_one(&pct, &dir.path().join("3")).await.unwrap();
    assert_eq!(std::fs::read(&got.host_path).unwrap(), b"hello world");

    // A gzipped tar archive becomes a directory.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "sub/x.txt", &b"hi"[..]).unwrap();
    let archive = gzip(&tar.into_inner().unwrap());
    let got = p
        .prepare_one(
            &inline_input("/inputs/tree", "application/gzip", &archive),
            &dir.path().join("4"),
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(got.host_path.join("sub/x.txt")).unwrap(),
        b"hi"
    );

    let bad = input("inline", "/x", &[("URL", "data:;base64,!!!".into())]);
    assert!(matches!(
        p.prepare_one(&bad, &dir.path().join("5")).await,
        Err(InputError::BadDataUrl(_))
    ));
    let dotdot = inline_input("/inputs/../etc/passwd", "text/plain", b"x");
    let e = p
        .prepare_one(&dotdot, &dir.path().join("6"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("must not contain `..`"), "{e}");
}

fn bytes_under(p: &std::path::Path) -> u64 {
    match std::fs::metadata(p) {
        Ok(m) if m.is_dir() => std::fs::read_dir(p)
            .unwrap()
            .map(|e| bytes_under(&e.unwrap().path()))
            .sum(),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

/// Abuse: an inline gzip bomb (256 KiB inflating to 256 MiB of zeros) is refused by its ratio after
/// the first 16 MiB, as it streams to disk, and leaves no partial file; the next input is prepared.
#[tokio::test]
async fn an_inline_gzip_bomb_is_refused_and_leaves_nothing() {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..256 {
        e.write_all(&chunk).unwrap();
    }
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < 300 << 10, "{}", bomb.len());
    let dir = tempfile::tempdir().unwrap();
    let p = InputPreparer::new(InputOptions::default()).unwrap();
    let e = p
        .prepare_one(
            &inline_input("/inputs/bomb", "application/gzip", &bomb),
            &dir.path().join("0"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, InputError::BadDataUrl(_)) && e.to_string().contains("decompression bomb"),
        "{e}"
    );
    assert_eq!(bytes_under(dir.path()), 0, "no partial file is left");
    // The same bytes under an absolute cap smaller than the floor give the size error instead.
    let small = InputPreparer::new(InputOptions {
        max_download_bytes: 1 << 20,
        ..InputOptions::default()
    })
    .unwrap();
    let e = small
        .prepare_one(
            &inline_input("/inputs/bomb", "application/gzip", &bomb),
            &dir.path().join("1"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, InputError::TooLarge { .. }), "{e}");
    let ok = p
        .prepare_one(
            &inline_input("/inputs/a.txt", "application/gzip", &gzip(b"fine")),
            &dir.path().join("2"),
        )
        .await
        .unwrap();
    assert_eq!(std::fs::read(&ok.host_path).unwrap(), b"fine");
}

#[tokio::test]
async fn local_inputs_must_be_under_the_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let allowed = dir.path().join("allowed");
    let other = dir.path().join("other");
    std::fs::create_dir_all(&allowed).unwrap();
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(allowed.join("f.txt"), b"ok").unwrap();
    std::fs::write(other.join("secret.txt"), b"no").unwrap();
    std::os::unix::fs::symlink(other.join("secret.txt"), allowed.join("link.txt")).unwrap();
    let p = InputPreparer::new(InputOptions {
        allow_listed_local_paths: vec![format!("{}:ro", allowed.display())],
        ..Default::default()
    })
    .unwrap();
    let work = dir.path().join("work");

    let ok = input(
        "local",
        "/inputs",
        &[("SourcePath", allowed.display().to_string().into())],
    );
    let got = p.prepare_one(&ok, &work).await.unwrap();
    assert!(got.read_only);
    assert_eq!(got.host_path, std::fs::canonicalize(&allowed).unwrap());

    let outside = input(
        "local",
        "/inputs",
        &[(
            "SourcePath",
            other.join("secret.txt").display().to_string().into(),
        )],
    );
    let e = p.prepare_one(&outside, &work).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("is not under an allow-listed path of this node"),
        "{e}"
    );

    let via_link = input(
        "localDirectory",
        "/inputs/l.txt",
        &[(
            "SourcePath",
            allowed.join("link.txt").display().to_string().into(),
        )],
    );
    let e = p.prepare_one(&via_link, &work).await.unwrap_err();
    assert!(
        matches!(e, InputError::NotAllowed { .. }),
        "a symlink out of the allowed tree is refused: {e}"
    );

    let rw = input(
        "local",
        "/inputs",
        &[
            ("SourcePath", allowed.display().to_string().into()),
            ("ReadWrite", true.into()),
        ],
    );
    assert!(matches!(
        p.prepare_one(&rw, &work).await.unwrap_err(),
        InputError::ReadWriteNotAllowed { .. }
    ));

    let missing = input(
        "local",
        "/inputs",
        &[(
            "SourcePath",
            allowed.join("nope").display().to_string().into(),
        )],
    );
    assert!(matches!(
        p.prepare_one(&missing, &work).await.unwrap_err(),
        InputError::NotFound(_)
    ));

    let none = InputPreparer::new(InputOptions::default()).unwrap();
    let e = none.prepare_one(&ok, &work).await.unwrap_err();
    assert!(e.to_string().contains("none configured"), "{e}");
}

#[tokio::test]
async fn url_downloads_stream_to_disk_with_limits() {
    install_crypto();
    let base = http_server(b"downloaded bytes\n").await;
    let dir = tempfile::tempdir().unwrap();
    let p = InputPreparer::new(loopback_allowed()).unwrap();
    let got = p
        .prepare_one(
            &input(
                "urlDownload",
                "/inputs/data.txt",
                &[("URL", format!("{base}/data.txt").into())],
            ),
            &dir.path().join("0"),
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&got.host_path).unwrap(),
        b"downloaded bytes\n"
    );
    let got = p
        .prepare_one(
            &input(
                "urlDownload",
                "/inputs/r.txt",
                &[("URL", format!("{base}/redirect").into())],
            ),
            &dir.path().join("1"),
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&got.host_path).unwrap(),
        b"downloaded bytes\n",
        "redirects are followed"
    );

    let e = p
        .prepare_one(
            &input(
                "urlDownload",
                "/inputs/x",
                &[("URL", format!("{base}/missing").into())],
            ),
            &dir.path().join("2"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 404"), "{e}");

    let small = InputPreparer::new(InputOptions {
        max_download_bytes: 4,
        ..loopback_allowed()
    })
    .unwrap();
    let e = small
        .prepare_one(
            &input(
                "urlDownload",
                "/inputs/x",
                &[("URL", format!("{base}/data.txt").into())],
            ),
            &dir.path().join("3"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, InputError::TooLarge { .. }), "{e}");

    let e = p
        .prepare_one(
            &input(
                "urlDownload",
                "/inputs/x",
                &[("URL", "ftp://example.invalid/x".into())],
            ),
            &dir.path().join("4"),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("\"ftp://example.invalid/x\" is not an http(s) URL"),
        "{e}"
    );
}

/// Input options that let URL inputs reach this machine's loopback (the test servers live there).
fn loopback_allowed() -> InputOptions {
    InputOptions {
        allow_private: vec!["127.0.0.1".into(), "localhost".into()],
        ..Default::default()
    }
}

#[tokio::test]
async fn url_inputs_cannot_reach_loopback_private_or_metadata_addresses_at_any_hop() {
    install_crypto();
    let base = http_server(b"secret of the node\n").await;
    let port = base.rsplit(':').next().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let strict = InputPreparer::new(InputOptions::default()).unwrap();
    async fn fetch_with(
        p: &InputPreparer,
        dir: std::path::PathBuf,
        url: String,
    ) -> Result<caravel_compute::executor::PreparedInput, InputError> {
        let i = input("urlDownload", "/inputs/x", &[("URL", url.into())]);
        p.prepare_one(&i, &dir).await
    }
    let fetch = |p, url, n: &str| fetch_with(p, dir.path().join(n), url);
    // An address literal: refused before any connection, with the key that would allow it.
    for url in [
        format!("http://127.0.0.1:{port}/data.txt"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]/x".to_string(),
        "http://10.0.0.1/x".to_string(),
    ] {
        let e = fetch(&strict, url.clone(), "a")
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("Compute.Fetch.AllowPrivate"), "{url}: {e}");
    }
    // A name that resolves to loopback: refused by the resolver, on the address it would use.
    let e = fetch(&strict, format!("http://localhost:{port}/data.txt"), "b")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Compute.Fetch.AllowPrivate") && e.contains("127.0.0.1"),
        "{e}"
    );
    // An allowed name that redirects to a refused address: refused at the redirect.
    let only_name = InputPreparer::new(InputOptions {
        allow_private: vec!["localhost".into()],
        ..Default::default()
    })
    .unwrap();
    let ok = fetch(&only_name, format!("http://localhost:{port}/data.txt"), "c").await;
    assert!(ok.is_ok(), "the allowed name itself: {ok:?}");
    let e = fetch(
        &only_name,
        format!("http://localhost:{port}/redirect-to-literal"),
        "d",
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("127.0.0.1") && e.contains("AllowPrivate"), "{e}");
    assert!(
        !dir.path().join("d").join("x").exists(),
        "nothing was written"
    );
}

#[tokio::test]
async fn unsupported_sources_are_named() {
    let p = InputPreparer::new(InputOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = p
        .prepare_one(
            &input("gcs", "/inputs", &[("Bucket", "b".into())]),
            dir.path(),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input source type \"gcs\" is not supported on this node (supported: inline, local, localDirectory, urlDownload, s3, s3PreSigned)"
    );
}

#[tokio::test]
async fn an_unreachable_url_is_reported() {
    install_crypto();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/x.txt");
    let dir = tempfile::tempdir().unwrap();
    let p = InputPreparer::new(loopback_allowed()).unwrap();
    let e = p
        .prepare_one(
            &input("urlDownload", "/inputs/x", &[("URL", url.clone().into())]),
            dir.path(),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, InputError::Download { .. }), "{e}");
    assert!(
        e.to_string()
            .starts_with(&format!("cannot download {url}: ")),
        "{e}"
    );
    assert!(!dir.path().join("x").exists(), "nothing is left behind");
}

#[tokio::test]
async fn ipfs_inputs_need_a_gateway_and_are_fetched_through_it() {
    install_crypto();
    const CID: &str = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let dir = tempfile::tempdir().unwrap();
    let cid_input = input("ipfs", "/inputs/hello.txt", &[("CID", CID.into())]);

    let none = InputPreparer::new(InputOptions::default()).unwrap();
    assert!(!none.supported_sources().contains(&"ipfs".to_string()));
    let e = none
        .prepare_one(&cid_input, &dir.path().join("0"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "ipfs inputs are not supported on this node: set Compute.IPFSGateway"
    );

    // A gateway that predates TAR answers (`?format=tar`) with the file's bytes: kept as the file.
    let gateway = serve_paths(vec![(
        format!("/ipfs/{CID}?format=tar"),
        b"hello ipfs\n".to_vec(),
    )])
    .await;
    let p = InputPreparer::new(InputOptions {
        ipfs_gateway: Some(format!("{gateway}/")),
        ..Default::default()
    })
    .unwrap();
    assert!(p.supported_sources().contains(&"ipfs".to_string()));
    let got = p
        .prepare_one(&cid_input, &dir.path().join("1"))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.host_path).unwrap(), b"hello ipfs\n");
    assert!(got.read_only);

    let unknown = input("ipfs", "/inputs/x", &[("CID", "bafkunknown".into())]);
    let e = p
        .prepare_one(&unknown, &dir.path().join("2"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("HTTP 404"), "{e}");
    let sneaky = input("ipfs", "/inputs/x", &[("CID", "../etc/passwd".into())]);
    assert!(matches!(
        p.prepare_one(&sneaky, &dir.path().join("3")).await,
        Err(InputError::BadCid(_))
    ));
    // A local gateway opens its host to the gateway's fetches only, not to a job's URLs.
    let url = input(
        "urlDownload",
        "/inputs/y",
        &[("URL", format!("{gateway}/ipfs/{CID}?format=tar").into())],
    );
    let e = p
        .prepare_one(&url, &dir.path().join("4"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("Compute.Fetch.AllowPrivate"), "{e}");
}

/// A TAR as an IPFS gateway answers `?format=tar`: every entry below one root named `root`.
fn gateway_tar(root: &str, entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, body) in entries {
        let mut h = tar::Header::new_ustar();
        let name = if path.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{path}")
        };
        match body {
            Some(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, &name, *data).unwrap();
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, format!("{name}/"), &[][..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// As Bacalhau: a directory CID is the directory tree at the target, a file CID a file; both
/// asked of the gateway as TAR. A TAR whose entry would leave the target is refused and leaves
/// nothing behind.
#[tokio::test]
async fn an_ipfs_directory_cid_is_laid_out_as_a_directory_and_a_file_cid_as_a_file() {
    install_crypto();
    const DIR: &str = "bafybeiczqj6w5tggtshvlyevr24drgrboffuepe2lxeojsnwmfw4tpttzu";
    const FILE: &str = "bafkreialihlqnf5uwo4byh4n3cmwlntwqzxxs2fg5vanqdi3d7tb2l5xkm";
    const EVIL: &str = "bafybeicaj7kvxpcv4neaqzwhrqqmdstu4dhrwfpknrgebq6nzcecfucvyu";
    let tree = gateway_tar(
        DIR,
        &[
            ("", None),
            ("a.txt", Some(b"alpha\n")),
            ("sub", None),
            ("sub/b.txt", Some(b"beta\n")),
        ],
    );
    let one = gateway_tar(FILE, &[("", Some(b"just one\n"))]);
    let mut evil = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    // `append_data` refuses `..`, so the name goes into the header directly.
    let name = format!("{EVIL}/../../escape");
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_cksum();
    evil.append(&h, &b"x"[..]).unwrap();
    let evil = evil.into_inner().unwrap();
    let gateway = serve_typed(vec![
        (format!("/ipfs/{DIR}?format=tar"), "application/x-tar", tree),
        (format!("/ipfs/{FILE}?format=tar"), "application/x-tar", one),
        (
            format!("/ipfs/{EVIL}?format=tar"),
            "application/x-tar",
            evil,
        ),
    ])
    .await;
    let p = InputPreparer::new(InputOptions {
        ipfs_gateway: Some(gateway),
        ..Default::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();

    let got = p
        .prepare_one(
            &input("ipfs", "/inputs", &[("CID", DIR.into())]),
            &dir.path().join("0"),
        )
        .await
        .unwrap();
    assert_eq!(got.host_path, dir.path().join("0/inputs"));
    assert_eq!(got.target, "/inputs");
    assert_eq!(
        std::fs::read(got.host_path.join("a.txt")).unwrap(),
        b"alpha\n"
    );
    assert_eq!(
        std::fs::read(got.host_path.join("sub/b.txt")).unwrap(),
        b"beta\n"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("0"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["inputs"], "no staging left beside the input");

    let got = p
        .prepare_one(
            &input("ipfs", "/data/one.txt", &[("CID", FILE.into())]),
            &dir.path().join("1"),
        )
        .await
        .unwrap();
    assert!(got.host_path.is_file());
    assert_eq!(std::fs::read(&got.host_path).unwrap(), b"just one\n");

    let e = p
        .prepare_one(
            &input("ipfs", "/inputs", &[("CID", EVIL.into())]),
            &dir.path().join("2"),
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("would land outside the target directory"),
        "{e}"
    );
    assert!(!dir.path().join("escape").exists());
    assert_eq!(
        std::fs::read_dir(dir.path().join("2")).unwrap().count(),
        0,
        "nothing left behind"
    );
}
