//! Files over real sockets: whole, ranged, conditional, and a directory
//! served without a way out of it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use vigil::files::StaticDir;
use vigil::{Request, Response};

use crate::util::{self, Client};

/// A fresh directory under the system's temporary one, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("vigil-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `www/` with `index.html`, `big.bin` (`size` bytes of a pattern) and
/// `sub/`, beside `secret.txt`, outside it, which `www/leak` links to.
fn site(name: &str, size: usize) -> (TempDir, PathBuf, Vec<u8>) {
    let dir = TempDir::new(name);
    let www = dir.0.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    std::fs::write(www.join("index.html"), b"<h1>home</h1>\n").unwrap();
    std::fs::write(www.join("sub/index.html"), b"<h1>sub</h1>\n").unwrap();
    let big: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(www.join("big.bin"), &big).unwrap();
    std::fs::write(dir.0.join("secret.txt"), b"do not serve").unwrap();
    std::os::unix::fs::symlink(dir.0.join("secret.txt"), www.join("leak")).unwrap();
    (dir, www, big)
}

fn serve_dir(www: &std::path::Path) -> vigil::ServerHandle {
    let files = Arc::new(StaticDir::new(www).unwrap());
    util::start(util::config(1), move |_slot| {
        let files = files.clone();
        move |req: &Request<'_>, res: &mut Response| {
            if req.path() == "/hello" {
                res.body_static(b"hello");
            } else {
                files.serve(req, res);
            }
        }
    })
}

fn request(client: &mut Client, path: &str, extra: &str) -> util::Reply {
    client.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes());
    client.reply()
}

#[test]
fn a_file_is_sent_whole_and_a_range_of_it_with_206_or_416() {
    let (_dir, www, big) = site("ranges", 3 << 20);
    let server = serve_dir(&www);
    let mut client = Client::new(server.local_addr());
    let whole = request(&mut client, "/big.bin", "");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-length"), Some(big.len().to_string().as_str()));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert!(whole.body == big, "the bytes sent are the file's");

    let part = request(&mut client, "/big.bin", "Range: bytes=1000-1999\r\n");
    assert_eq!(part.status, 206);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 1000-1999/{}", big.len()).as_str())
    );
    assert!(part.body == big[1000..2000]);

    let tail = request(&mut client, "/big.bin", "Range: bytes=-10\r\n");
    assert_eq!(tail.status, 206);
    assert!(tail.body == big[big.len() - 10..]);

    let outside = request(&mut client, "/big.bin", &format!("Range: bytes={}-\r\n", big.len()));
    assert_eq!(outside.status, 416);
    assert_eq!(outside.header("content-range"), Some(format!("bytes */{}", big.len()).as_str()));

    // A range for another version of the file: the whole of this one.
    let stale = request(&mut client, "/big.bin", "Range: bytes=0-9\r\nIf-Range: \"0-0\"\r\n");
    assert_eq!(stale.status, 200);
    assert_eq!(stale.body.len(), big.len());
}

#[test]
fn a_current_copy_gets_304_by_etag_or_date() {
    let (_dir, www, _) = site("conditional", 1000);
    let server = serve_dir(&www);
    let mut client = Client::new(server.local_addr());
    let first = request(&mut client, "/big.bin", "");
    let etag = first.header("etag").unwrap().to_string();
    let modified = first.header("last-modified").unwrap().to_string();

    let again = request(&mut client, "/big.bin", &format!("If-None-Match: W/{etag}, \"x\"\r\n"));
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    let by_date = request(&mut client, "/big.bin", &format!("If-Modified-Since: {modified}\r\n"));
    assert_eq!(by_date.status, 304);
    let other = request(&mut client, "/big.bin", "If-None-Match: \"other\"\r\n");
    assert_eq!(other.status, 200, "a different tag decides, whatever the date");
    assert_eq!(other.body.len(), 1000);
}

#[test]
fn traversal_encoded_or_by_symlink_is_refused() {
    let (_dir, www, _) = site("traversal", 10);
    let server = serve_dir(&www);
    let mut client = Client::new(server.local_addr());
    for (path, status) in [
        ("/../secret.txt", 403),
        ("/%2e%2e/secret.txt", 403),
        ("/sub/%2E%2E/%2e%2e/secret.txt", 403),
        ("/leak", 403),
        ("/index.html%00.txt", 400),
        ("/nothing-here", 404),
    ] {
        let reply = request(&mut client, path, "");
        assert_eq!(reply.status, status, "{path}");
        assert!(!reply.text().contains("do not serve"), "{path}");
    }
    assert_eq!(request(&mut client, "/", "").text(), "<h1>home</h1>\n");
    let redirect = request(&mut client, "/sub", "");
    assert_eq!((redirect.status, redirect.header("location")), (301, Some("/sub/")));
    assert_eq!(request(&mut client, "/sub/", "").text(), "<h1>sub</h1>\n");
    let index = request(&mut client, "/", "");
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
}

#[test]
fn a_download_nobody_reads_does_not_hold_up_the_loop() {
    // 64 MiB, far beyond what the socket buffers hold: the loop sends
    // slices as the client takes them, and serves others meanwhile.
    let (_dir, www, big) = site("slow-download", 64 << 20);
    let server = serve_dir(&www);
    let addr = server.local_addr();
    let mut slow = util::connect(addr);
    slow.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut first = [0u8; 4096];
    slow.read_exact(&mut first).unwrap();
    for _ in 0..3 {
        assert_eq!(util::get(addr, "/hello").unwrap().text(), "hello");
    }
    // The rest arrives whole once the client reads.
    let mut all = first.to_vec();
    let head_end = util::body_start(&all);
    let mut rest = vec![0u8; big.len() + head_end - all.len()];
    slow.read_exact(&mut rest).unwrap();
    all.extend_from_slice(&rest);
    assert!(all[head_end..] == big[..]);
}

#[test]
fn head_of_a_file_sends_its_length_and_no_bytes() {
    let (_dir, www, big) = site("head", 5000);
    let server = serve_dir(&www);
    let mut client = Client::new(server.local_addr());
    client.send(b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = client.reply_to("HEAD").unwrap();
    assert_eq!(head.header("content-length"), Some(big.len().to_string().as_str()));
    assert_eq!(client.reply().text(), "hello", "nothing of the file came between");
}

#[test]
fn as_middleware_files_are_served_and_everything_else_reaches_the_routes() {
    let (_dir, www, _) = site("middleware", 10);
    let app = vigil::app::App::new()
        .get("/api/ping", |_req: &Request<'_>, res: &mut Response| {
            res.body_static(b"pong");
        })
        .middleware(StaticDir::new(&www).unwrap())
        .build()
        .unwrap();
    let server = util::start(util::config(1), app);
    let mut client = Client::new(server.local_addr());
    assert_eq!(request(&mut client, "/index.html", "").text(), "<h1>home</h1>\n");
    assert_eq!(request(&mut client, "/api/ping", "").text(), "pong");
    assert_eq!(request(&mut client, "/nothing", "").status, 404, "the app's fallback");
    let refused = request(&mut client, "/%2e%2e/secret.txt", "");
    assert_eq!(refused.status, 404, "not a file here: the fallback answers, not the file");
    assert!(!refused.text().contains("do not serve"));
}
