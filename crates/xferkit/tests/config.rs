//! Configuration layering and its error messages.

#![allow(clippy::unwrap_used, clippy::result_large_err)] // test helpers panic on failure; figment::Jail fixes the error type

use figment::Jail;
use xferkit::ErrorKind;
use xferkit::Key;
use xferkit::config::{Settings, build_registry, figment_for};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Load settings and registry inside a Jail; return the error message if any.
fn load(jail: &Jail, file: Option<&str>) -> Result<xferkit::Registry, xferkit::Error> {
    let path = file.map(|f| jail.directory().join(f));
    let fig = figment_for(path.as_deref())?;
    let settings = Settings::from_figment(&fig)?;
    rt().block_on(build_registry(&fig, &settings))
}

fn isolate(jail: &mut Jail) {
    let dir = jail.directory().to_path_buf();
    jail.set_env("XDG_DATA_HOME", dir.join("data").display());
    jail.set_env("XDG_CONFIG_HOME", dir.join("cfg").display());
    jail.set_env("HOME", dir.display());
}

#[test]
fn no_config_gives_an_embedded_local_store() {
    Jail::expect_with(|jail| {
        isolate(jail);
        let reg = load(jail, None).expect("default config loads");
        let store = reg.default_store().unwrap();
        assert_eq!(store.name(), "local");
        assert!(
            store
                .url_for(&Key::new("a").unwrap())
                .starts_with("file://"),
            "{}",
            store.url_for(&Key::new("a").unwrap())
        );
        assert!(
            store
                .url_for(&Key::new("a").unwrap())
                .contains("/data/xferkit/files/")
        );
        Ok(())
    });
}

#[test]
fn file_then_env_override() {
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file(
            "x.toml",
            r#"
            default_store = "media"
            [stores.media]
            backend = "local"
            root = "media-root"
            "#,
        )?;
        let reg = load(jail, Some("x.toml")).unwrap();
        let media = reg.default_store().unwrap();
        assert_eq!(media.name(), "media");
        assert!(
            media
                .url_for(&Key::new("k").unwrap())
                .contains("/media-root/k")
        );
        jail.set_env("XFERKIT_STORES__MEDIA__ROOT", "env-root");
        let reg = load(jail, Some("x.toml")).unwrap();
        assert!(
            reg.get("media")
                .unwrap()
                .url_for(&Key::new("k").unwrap())
                .contains("/env-root/k")
        );
        // XFERKIT_CONFIG is honoured when no --config is given.
        jail.set_env("XFERKIT_CONFIG", jail.directory().join("x.toml").display());
        let reg = load(jail, None).unwrap();
        assert_eq!(reg.default_store().unwrap().name(), "media");
        Ok(())
    });
}

fn config_error(toml: &str) -> String {
    let mut msg = String::new();
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file("bad.toml", toml)?;
        let err = load(jail, Some("bad.toml")).expect_err("config should be refused");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig, "{err}");
        msg = err.to_string();
        Ok(())
    });
    msg
}

#[test]
fn errors_name_the_key_and_the_file() {
    let m = config_error("[stores.x]\nbackend = \"ftp\"\n");
    assert!(
        m.contains("stores.x.backend") && m.contains("\"ftp\"") && m.contains("bad.toml"),
        "{m}"
    );

    let m = config_error("[stores.x]\nbackend = \"local\"\nrot = \"typo\"\n");
    assert!(
        m.contains("stores.x.rot") && m.contains("bad.toml") && m.contains("root"),
        "{m}"
    );

    let m = config_error("default_store = \"nope\"\n");
    assert!(m.contains("default_store") && m.contains("nope"), "{m}");

    let m = config_error("[stores.x]\nroot = \"r\"\n");
    assert!(m.contains("stores.x.backend is missing"), "{m}");

    let m = config_error("colour = 3\n");
    assert!(
        m.contains("unknown key `colour`") && m.contains("bad.toml"),
        "{m}"
    );

    let m = config_error("concurrency = \"many\"\n");
    assert!(m.contains("concurrency") && m.contains("bad.toml"), "{m}");

    let m = config_error("[stores.x]\nbackend = \"local\"\nroot = \"\"\n");
    assert!(m.contains("stores.x.root"), "{m}");

    let m = config_error("[stores.x\nbackend = 1\n");
    assert!(
        m.contains("bad.toml"),
        "malformed TOML must name the file: {m}"
    );
}

#[cfg(not(feature = "s3"))]
#[test]
fn backend_not_compiled_in_says_which_feature() {
    let m = config_error("[stores.x]\nbackend = \"s3\"\nbucket = \"b\"\n");
    assert!(m.contains("rebuild with feature `s3`"), "{m}");
}

#[test]
fn explicit_missing_file_is_an_error() {
    Jail::expect_with(|jail| {
        isolate(jail);
        let e = load(jail, Some("nope.toml")).unwrap_err();
        assert!(e.to_string().contains("nope.toml"), "{e}");
        Ok(())
    });
}

/// The shipped examples in `config/` stay valid: their top-level keys and
/// settings parse (stores are not built: they name real buckets and paths).
#[test]
fn shipped_config_examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let fig = figment_for(Some(&path)).unwrap();
            let s =
                Settings::from_figment(&fig).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!s.store_names.is_empty(), "{}", path.display());
            seen += 1;
        }
    }
    assert!(
        seen >= 4,
        "expected the four backend examples, found {seen}"
    );
}

#[test]
fn dedupe_and_thumbnail_settings_are_checked() {
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file(
            "a.toml",
            "[stores.local]\nbackend = \"local\"\nroot = \"f\"\ndedupe = \"content\"\n",
        )?;
        let reg = load(jail, Some("a.toml")).unwrap();
        let sharing = xferkit::Sharing::of(&reg).expect("the registry has the sharing layer");
        assert_eq!(sharing.dedupe("local"), xferkit::Dedupe::Content);

        jail.create_file(
            "b.toml",
            "[stores.local]\nbackend = \"local\"\nroot = \"f\"\ndedupe = \"hash\"\n",
        )?;
        let e = load(jail, Some("b.toml")).unwrap_err().to_string();
        assert!(
            e.contains("stores.local.dedupe") && e.contains("b.toml"),
            "{e}"
        );

        jail.create_file("c.toml", "[thumbnail]\nmax_side = 5\n")?;
        let e = load(jail, Some("c.toml")).unwrap_err().to_string();
        assert!(
            e.contains("thumbnail.max_side") && e.contains("c.toml"),
            "{e}"
        );

        jail.create_file("d.toml", "[thumbnail]\nsize = 5\n")?;
        let e = load(jail, Some("d.toml")).unwrap_err().to_string();
        assert!(e.contains("size"), "{e}");
        Ok(())
    });
}

#[test]
fn download_settings_reach_the_manager_and_bad_values_are_named() {
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file(
            "a.toml",
            "[download]\npart_size = 4194304\nconcurrency = 3\nparallel_threshold = 1048576\n",
        )?;
        let fig = figment_for(Some(&jail.directory().join("a.toml"))).unwrap();
        let kit = rt().block_on(xferkit::Xferkit::from_figment(&fig)).unwrap();
        let opts = kit.manager().download_options();
        assert_eq!(
            (opts.part_size, opts.concurrency, opts.parallel_threshold),
            (4_194_304, 3, 1_048_576)
        );
        // A part size that was asked for is kept exactly; unset, big objects grow theirs.
        assert!(!opts.auto_part_size);
        jail.create_file("c.toml", "[download]\nconcurrency = 3\n")?;
        let fig = figment_for(Some(&jail.directory().join("c.toml"))).unwrap();
        let kit = rt().block_on(xferkit::Xferkit::from_figment(&fig)).unwrap();
        let opts = kit.manager().download_options();
        assert!(opts.auto_part_size);
        assert_eq!(opts.part_size, xferkit_core::DEFAULT_DOWNLOAD_PART_SIZE);
        for (body, want) in [
            ("[download]\npart_size = 100\n", "download.part_size = 100"),
            ("[download]\nconcurrency = 0\n", "download.concurrency = 0"),
            ("[download]\nparts = 3\n", "parts"),
        ] {
            jail.create_file("b.toml", body)?;
            let e = load(jail, Some("b.toml")).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        Ok(())
    });
}

#[test]
fn bandwidth_limit_reaches_every_manager_and_bad_rates_are_named() {
    Jail::expect_with(|jail| {
        isolate(jail);
        for (body, want) in [
            ("[limits]\nbandwidth = \"10MiB\"\n", Some(10 << 20)),
            ("[limits]\nbandwidth = \"500 KB/s\"\n", Some(500_000)),
            ("[limits]\nbandwidth = 4096\n", Some(4096)),
            ("[limits]\nbandwidth = \"off\"\n", None),
            ("", None),
        ] {
            jail.create_file("a.toml", body)?;
            let fig = figment_for(Some(&jail.directory().join("a.toml"))).unwrap();
            let mut kit = rt().block_on(xferkit::Xferkit::from_figment(&fig)).unwrap();
            assert_eq!(kit.manager().bandwidth_limit(), want, "{body}");
            let many = rt().block_on(async { kit.new_manager(8).bandwidth_limit() });
            assert_eq!(many, want, "{body}");
            kit.set_bandwidth_limit(Some(1 << 20));
            assert_eq!(kit.manager().bandwidth_limit(), Some(1 << 20));
        }
        jail.set_env("XFERKIT_LIMITS__BANDWIDTH", "2MiB");
        jail.create_file("a.toml", "")?;
        let fig = figment_for(Some(&jail.directory().join("a.toml"))).unwrap();
        let kit = rt().block_on(xferkit::Xferkit::from_figment(&fig)).unwrap();
        assert_eq!(kit.manager().bandwidth_limit(), Some(2 << 20));
        jail.clear_env();
        isolate(jail);
        for body in [
            "[limits]\nbandwidth = \"fast\"\n",
            "[limits]\nbandwith = \"1MiB\"\n",
        ] {
            jail.create_file("b.toml", body)?;
            let e = load(jail, Some("b.toml")).unwrap_err().to_string();
            assert!(e.contains("limits") || e.contains("bandwith"), "{e}");
            assert!(e.contains("b.toml"), "{e}");
        }
        Ok(())
    });
}

/// The server-side upload defaults of a store table (issue 16): from the
/// file and the environment, typed (a tags table, a bool from a variable);
/// a key the backend does not honour is unknown to it, and a bad value names
/// the key.
#[cfg(feature = "s3")]
#[test]
fn server_side_upload_defaults_from_file_and_env() {
    let store = r#"
        default_store = "m"
        [stores.m]
        backend = "s3"
        bucket = "b"
        endpoint = "http://127.0.0.1:9"
        access_key_id = "AKID"
        secret_access_key = "SECRET"
        storage_class = "STANDARD_IA"
        cache_control = "max-age=60"
        tags = { team = "media" }
    "#;
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file("x.toml", store)?;
        jail.set_env("XFERKIT_STORES__M__SSE_KMS_KEY_ID", "alias/xferkit");
        jail.set_env("XFERKIT_STORES__M__SSE_BUCKET_KEY", "true");
        let reg = load(jail, Some("x.toml")).unwrap();
        let shown = format!("{:?}", reg.get("m").unwrap());
        for want in [
            "STANDARD_IA",
            "max-age=60",
            "\"team\": \"media\"",
            "alias/xferkit",
            "bucket_key: Some(true)",
        ] {
            assert!(shown.contains(want), "{want} missing from {shown}");
        }
        Ok(())
    });
    let m = config_error(&format!("{store}encryption_scope = \"s\"\n"));
    assert!(
        m.contains("stores.m.encryption_scope") && m.contains("storage_class"),
        "{m}"
    );
    let m = config_error(&format!("{store}sse = \"rot13\"\n"));
    assert!(m.contains("stores.m.sse") && m.contains("rot13"), "{m}");
    let m = config_error(&format!("{store}sse = \"customer\"\n"));
    assert!(m.contains("stores.m.sse_customer_key"), "{m}");
}

/// A backend names keys relative to its table; the facade puts
/// `stores.NAME.` in front and says where the key's value came from (the
/// environment, or the file holding the table), or `stores.NAME: `
/// for an error about the whole table.
#[cfg(feature = "s3")]
#[test]
fn backend_errors_get_the_table_path_and_the_origin_of_the_key() {
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file(
            "x.toml",
            "[stores.m]\nbackend = \"s3\"\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9\"\n",
        )?;
        jail.set_env("XFERKIT_STORES__M__PART_SIZE", "1024");
        let e = load(jail, Some("x.toml")).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid configuration: stores.m.part_size = 1024 must be between"),
            "{e}"
        );
        // The environment, not the file that holds the rest of the table.
        assert!(
            e.ends_with("(in `XFERKIT_` environment variable(s))"),
            "{e}"
        );
        Ok(())
    });
    // A key that is not set: the table's file.
    let m = config_error("[stores.m]\nbackend = \"s3\"\n");
    assert!(
        m.starts_with("invalid configuration: stores.m.bucket is missing (the S3 bucket name)"),
        "{m}"
    );
    assert!(m.contains("bad.toml"), "{m}");
}

/// An error about a whole table (no one key): `stores.NAME: …`.
#[cfg(feature = "azure")]
#[test]
fn a_backend_error_about_the_whole_table_names_the_table() {
    let m = config_error(
        "[stores.a]\nbackend = \"azure\"\naccount = \"myacct\"\ncontainer = \"media\"\n\
         endpoint = \"http://127.0.0.1:9/myacct\"\n",
    );
    assert!(
        m.starts_with(
            "invalid configuration: stores.a: no credential is set, so Microsoft Entra ID"
        ),
        "{m}"
    );
    assert!(m.contains("bad.toml"), "{m}");
}

/// Every backend compiled in is a row of the table under its own kind, and
/// the accepted keys come from its config struct (aliases too).
#[cfg(all(feature = "local", feature = "s3", feature = "gcs", feature = "azure"))]
#[test]
fn the_table_of_backends_builds_each_kind_and_lists_its_keys() {
    use xferkit::Backend;
    use xferkit::backends::{azure, gcs, local, s3};
    for kind in [
        local::LocalStore::KIND,
        s3::S3Store::KIND,
        gcs::GcsStore::KIND,
        azure::AzureStore::KIND,
    ] {
        assert!(xferkit::config::ALL_BACKENDS.contains(&kind), "{kind}");
    }
    assert!(local::LocalStore::keys().contains(&"serve_inline_types"));
    let s3 = s3::S3Store::keys();
    for k in [
        "bucket",
        "aws_region",
        "endpoint_url",
        "copy_threshold",
        "sse_bucket_key",
    ] {
        assert!(s3.contains(&k), "{k}: {s3:?}");
    }
    assert!(gcs::GcsStore::keys().contains(&"storage_endpoint"));
    assert!(azure::AzureStore::keys().contains(&"encryption_scope"));
    // The unknown key's message lists the backend's keys.
    let m = config_error("[stores.x]\nbackend = \"gcs\"\nbuckt = \"b\"\n");
    assert!(
        m.contains("unknown key `stores.x.buckt`")
            && m.contains("backend `gcs` accepts")
            && m.contains("chunk_size"),
        "{m}"
    );
}

/// The memory backend from a table (issue 18: a backend added with one row
/// of the facade's table): its URLs resolve, its keys are checked and named,
/// and its server-side defaults apply.
#[cfg(feature = "memory")]
#[test]
fn a_memory_store_from_configuration() {
    use xferkit::{FileTransferExt, PutOptions, TransferCtx, UploadSource};
    Jail::expect_with(|jail| {
        isolate(jail);
        jail.create_file(
            "x.toml",
            "default_store = \"m\"\n[stores.m]\nbackend = \"memory\"\ncache_control = \"no-store\"\n",
        )?;
        let reg = load(jail, Some("x.toml")).unwrap();
        let (store, key) = reg.resolve("mem://m/a/b.txt").unwrap();
        assert_eq!((store.name(), key.as_str()), ("m", "a/b.txt"));
        rt().block_on(async {
            let up = store
                .upload(
                    &key,
                    UploadSource::from_bytes("hi"),
                    &PutOptions::default(),
                    &TransferCtx::none(),
                )
                .await
                .unwrap();
            assert_eq!(up.headers.cache_control.as_deref(), Some("no-store"));
            assert_eq!(&store.read_bytes(&key, None).await.unwrap()[..], b"hi");
        });
        Ok(())
    });
    let m = config_error("[stores.m]\nbackend = \"memory\"\npart_size = 0\n");
    assert!(
        m.starts_with("invalid configuration: stores.m.part_size = 0 must be between 1 and"),
        "{m}"
    );
    assert!(m.contains("bad.toml"), "{m}");
    let m = config_error("[stores.m]\nbackend = \"memory\"\ntags = { a = \"b\" }\n");
    assert!(
        m.contains("unknown key `stores.m.tags`") && m.contains("part_delay"),
        "{m}"
    );
    let m = config_error("[stores.m]\nbackend = \"memory\"\npart_delay = \"soon\"\n");
    assert!(
        m.contains("stores.m.part_delay") && m.contains("soon"),
        "{m}"
    );
}
