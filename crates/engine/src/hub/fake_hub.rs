//! A minimal HuggingFace hub on a loopback port, for download tests: it serves one
//! repository — the listing API (`/api/models/ID/revision/main`, with each file's `size` when
//! asked `?blobs=true`, as the real hub does) and `resolve/main/FILE` with the headers hf-hub
//! reads (etag, commit, content range) — and keeps every path it was asked for.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

pub(crate) const FAKE_SHA: &str = "5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e5ca1ab1e";

pub(crate) struct FakeHub {
    pub(crate) endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

/// What the fake serves: file contents, and sizes the listing claims instead of the real
/// ones (a multi-gigabyte LoRA without gigabytes).
struct Repo {
    id: &'static str,
    files: BTreeMap<&'static str, &'static str>,
    listed_sizes: BTreeMap<&'static str, u64>,
}

impl FakeHub {
    pub(crate) fn start(id: &'static str, files: BTreeMap<&'static str, &'static str>) -> Self {
        Self::start_with_sizes(id, files, BTreeMap::new())
    }

    /// A hub whose listing gives `listed_sizes` for those files.
    pub(crate) fn start_with_sizes(
        id: &'static str,
        files: BTreeMap<&'static str, &'static str>,
        listed_sizes: BTreeMap<&'static str, u64>,
    ) -> Self {
        let repo = Repo {
            id,
            files,
            listed_sizes,
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        // The thread serves until the test process ends; each test has its own port.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                serve(stream, &repo, &log);
            }
        });
        Self { endpoint, requests }
    }

    /// The paths asked for, query strings included, in order.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The paths of file downloads (`/ID/resolve/main/FILE`) asked for.
    pub(crate) fn fetched(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|p| p.contains("/resolve/"))
            .collect()
    }
}

fn serve(mut stream: TcpStream, repo: &Repo, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    reader.read_line(&mut request_line).unwrap();
    let target = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let mut range = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                range = value.trim().strip_prefix("bytes=").map(str::to_string);
            }
        }
    }
    log.lock().unwrap().push(target.clone());
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let id = repo.id;
    let listing = format!("/api/models/{id}/revision/main");
    let resolve = format!("/{id}/resolve/main/");
    let files = &repo.files;
    let file = path
        .strip_prefix(&resolve)
        .filter(|f| files.contains_key(f));
    let (status, headers, body) = if path == listing {
        let with_sizes = query.split('&').any(|q| q == "blobs=true");
        let siblings: Vec<_> = files
            .iter()
            .map(|(f, content)| {
                if with_sizes {
                    let size = repo
                        .listed_sizes
                        .get(f)
                        .copied()
                        .unwrap_or(content.len() as u64);
                    serde_json::json!({ "rfilename": f, "size": size, "blobId": "0123" })
                } else {
                    serde_json::json!({ "rfilename": f })
                }
            })
            .collect();
        let body = serde_json::json!({ "sha": FAKE_SHA, "siblings": siblings }).to_string();
        ("200 OK", String::new(), body.into_bytes())
    } else if let Some(file) = file {
        // hf-hub asks for `bytes=0-0` first (size, etag, commit), then `bytes=N-` (the data).
        let content = files[file].as_bytes();
        let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
            Some((start, end)) => (
                start.parse().unwrap(),
                end.parse::<usize>().map_or(content.len(), |e| e + 1),
            ),
            None => (0, content.len()),
        };
        let etag = files.keys().position(|f| *f == file).unwrap();
        let headers = format!(
            "ETag: \"blob{etag}\"\r\nX-Repo-Commit: {FAKE_SHA}\r\nContent-Range: bytes {start}-{}/{}\r\n",
            end - 1,
            content.len()
        );
        ("206 Partial Content", headers, content[start..end].to_vec())
    } else {
        (
            "404 Not Found",
            String::new(),
            b"{\"error\":\"Repository not found\"}".to_vec(),
        )
    };
    let head = format!(
        "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
}
