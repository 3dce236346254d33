//! Container images written by windlass itself — no daemon, no base image: the pack's trees
//! become layers (gzipped tars in an OCI image layout, plain tars in a docker archive), with
//! an image config (entrypoint, user, env, exposed ports, labels) and a manifest. `oci`
//! writes an `oci-archive` (a tar of `oci-layout`, `index.json`, `blobs/sha256/…`), what
//! `podman load` and `skopeo … oci-archive:` read; `docker` writes what `docker save` writes
//! (`manifest.json`, the config, `<diff_id>/layer.tar`), what `docker load` reads. Every
//! JSON document has sorted keys and the archive is written with [`super::archive`]'s fixed
//! headers, so the same trees give the same bytes.

use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::archive::{self, Layer};
use super::tree::{Node, Tree};

/// What the image runs and says about itself.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// `project:tag`.
    pub name: String,
    pub tag: String,
    pub entrypoint: Vec<String>,
    pub env: Vec<(String, String)>,
    pub user: String,
    pub working_dir: String,
    pub ports: Vec<u16>,
    pub labels: Vec<(String, String)>,
    pub stop_signal: String,
    /// Unix seconds, also the mtime of every entry.
    pub created: u64,
}

/// The image's layers: each a tree, bottom first, with a note for the history.
pub struct Layers<'a> {
    pub trees: Vec<(&'a Tree, &'a str)>,
}

fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    }
}

fn config_json(img: &ImageConfig, layers: &[Layer], notes: &[&str]) -> Vec<u8> {
    let created = rfc3339(img.created);
    let ports: serde_json::Map<String, Value> = img
        .ports
        .iter()
        .map(|p| (format!("{p}/tcp"), json!({})))
        .collect();
    let labels: serde_json::Map<String, Value> = img
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect();
    let env: Vec<String> = img.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let v = json!({
        "architecture": arch(),
        "os": "linux",
        "created": created,
        "author": "windlass pack",
        "config": {
            "User": img.user,
            "Env": env,
            "Entrypoint": img.entrypoint,
            "WorkingDir": img.working_dir,
            "ExposedPorts": ports,
            "Labels": labels,
            "StopSignal": img.stop_signal,
        },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|l| format!("sha256:{}", l.diff_id)).collect::<Vec<_>>(),
        },
        "history": notes.iter().map(|n| json!({"created": created, "created_by": format!("windlass pack: {n}")})).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&v).expect("a JSON value always serializes")
}

/// A temporary file beside the output, removed unless kept.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(out: &Path, n: usize) -> io::Result<(Scratch, std::fs::File)> {
        let dir = out.parent().unwrap_or(Path::new("."));
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok((Scratch { path }, f))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A blob of the outer archive: its name and where its bytes are.
enum Blob {
    Bytes(Vec<u8>),
    File(std::fs::File, u64),
}

fn append_blob<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    blob: &mut Blob,
    mtime: u64,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    match blob {
        Blob::Bytes(bytes) => {
            h.set_size(bytes.len() as u64);
            b.append_data(&mut h, name, bytes.as_slice())
        }
        Blob::File(f, len) => {
            h.set_size(*len);
            f.seek(io::SeekFrom::Start(0))?;
            use std::io::Read;
            b.append_data(&mut h, name, f.take(*len))
        }
    }
}

fn append_dir<W: Write>(b: &mut tar::Builder<W>, name: &str, mtime: u64) -> io::Result<()> {
    archive::append_node(
        b,
        Path::new(name),
        &Node::Dir {
            mode: 0o755,
            uid: 0,
        },
        mtime,
    )
}

/// The layer files, written beside `out`.
fn layers(
    out: &Path,
    layers: &Layers<'_>,
    mtime: u64,
    gz: bool,
) -> io::Result<Vec<(Scratch, std::fs::File, Layer)>> {
    let mut written = Vec::new();
    for (i, (tree, _)) in layers.trees.iter().enumerate() {
        let (scratch, f) = Scratch::new(out, i)?;
        let (f, layer) = archive::write_layer(tree, mtime, gz, io::BufWriter::new(f))?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        written.push((scratch, f, layer));
    }
    Ok(written)
}

/// Writes an OCI image layout, as an `oci-archive` tar, to `w`.
pub fn write_oci<W: Write>(out: &Path, w: W, img: &ImageConfig, l: &Layers<'_>) -> io::Result<W> {
    let mtime = img.created;
    let written = layers(out, l, mtime, true)?;
    let notes: Vec<&str> = l.trees.iter().map(|(_, n)| *n).collect();
    let descs: Vec<Layer> = written.iter().map(|(_, _, d)| d.clone()).collect();
    let config = config_json(img, &descs, &notes);
    let config_digest = archive::sha256(&config);
    let mut annotations = serde_json::Map::new();
    annotations.insert(
        "org.opencontainers.image.created".into(),
        json!(rfc3339(img.created)),
    );
    for (k, v) in &img.labels {
        if k.starts_with("org.opencontainers.image.") {
            annotations.insert(k.clone(), json!(v));
        }
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config.len(),
        },
        "layers": descs.iter().map(|d| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{}", d.digest),
            "size": d.size,
        })).collect::<Vec<_>>(),
        "annotations": annotations,
    }))
    .expect("a JSON value always serializes");
    let manifest_digest = archive::sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest.len(),
            "platform": { "architecture": arch(), "os": "linux" },
            "annotations": {
                "org.opencontainers.image.ref.name": img.tag,
                "io.containerd.image.name": img.name,
            },
        }],
    }))
    .expect("a JSON value always serializes");

    let mut blobs: Vec<(String, Blob)> = vec![
        (config_digest, Blob::Bytes(config)),
        (manifest_digest, Blob::Bytes(manifest)),
    ];
    let mut keep = Vec::new();
    for (scratch, f, d) in written {
        blobs.push((d.digest.clone(), Blob::File(f, d.size)));
        keep.push(scratch);
    }
    blobs.sort_by(|a, b| a.0.cmp(&b.0));
    blobs.dedup_by(|a, b| a.0 == b.0);
    let mut b = tar::Builder::new(w);
    append_dir(&mut b, "blobs", mtime)?;
    append_dir(&mut b, "blobs/sha256", mtime)?;
    for (digest, blob) in &mut blobs {
        append_blob(&mut b, &format!("blobs/sha256/{digest}"), blob, mtime)?;
    }
    append_blob(&mut b, "index.json", &mut Blob::Bytes(index), mtime)?;
    append_blob(
        &mut b,
        "oci-layout",
        &mut Blob::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        mtime,
    )?;
    let w = b.into_inner()?;
    drop(keep);
    Ok(w)
}

/// Writes a docker archive (`docker save`'s format) to `w`.
pub fn write_docker<W: Write>(
    out: &Path,
    w: W,
    img: &ImageConfig,
    l: &Layers<'_>,
) -> io::Result<W> {
    let mtime = img.created;
    let written = layers(out, l, mtime, false)?;
    let notes: Vec<&str> = l.trees.iter().map(|(_, n)| *n).collect();
    let descs: Vec<Layer> = written.iter().map(|(_, _, d)| d.clone()).collect();
    let config = config_json(img, &descs, &notes);
    let config_name = format!("{}.json", archive::sha256(&config));
    let manifest = serde_json::to_vec(&json!([{
        "Config": config_name,
        "RepoTags": [img.name],
        "Layers": descs.iter().map(|d| format!("{}/layer.tar", d.diff_id)).collect::<Vec<_>>(),
    }]))
    .expect("a JSON value always serializes");
    let (repo, tag) = img.name.rsplit_once(':').unwrap_or((&img.name, "latest"));
    let top = descs.last().map(|d| d.diff_id.clone()).unwrap_or_default();
    let repositories =
        serde_json::to_vec(&json!({ repo: { tag: top } })).expect("a JSON value always serializes");

    let mut entries: Vec<(String, Option<Blob>)> = vec![
        (config_name, Some(Blob::Bytes(config))),
        ("manifest.json".into(), Some(Blob::Bytes(manifest))),
        ("repositories".into(), Some(Blob::Bytes(repositories))),
    ];
    let mut keep = Vec::new();
    for (scratch, f, d) in written {
        entries.push((d.diff_id.clone(), None));
        entries.push((
            format!("{}/layer.tar", d.diff_id),
            Some(Blob::File(f, d.size)),
        ));
        keep.push(scratch);
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries.dedup_by(|a, b| a.0 == b.0);
    let mut b = tar::Builder::new(w);
    for (name, blob) in &mut entries {
        match blob {
            Some(blob) => append_blob(&mut b, name, blob, mtime)?,
            None => append_dir(&mut b, name, mtime)?,
        }
    }
    let w = b.into_inner()?;
    drop(keep);
    Ok(w)
}
