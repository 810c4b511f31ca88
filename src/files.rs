//! Serving a directory: `vigil --root DIR`, [`StaticDir::serve`] from a
//! handler, or [`StaticDir`] as app middleware.
//!
//! A request path is percent-decoded once and then checked: a NUL, a
//! backslash or a `..` segment is refused (400, 403), and the file found
//! must resolve, symlinks followed, to a path inside the root (otherwise
//! 403), so neither an encoded `..` nor a symlink leads out of it.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::app::{Middleware, Next};
use crate::{Request, Response};

/// A directory served as files: `index.html` for a directory, a
/// `Content-Type` from the file's extension, conditional and range
/// requests as [`Response::send_file`] answers them.
#[derive(Clone, Debug)]
pub struct StaticDir {
    /// Canonical: symlinks resolved, so a file's canonical path can be
    /// checked against it.
    root: PathBuf,
}

/// What a request path names under the root.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    File(PathBuf),
    /// A directory asked for without its trailing slash.
    Redirect(String),
    Status(u16, &'static str),
}

impl StaticDir {
    /// Serves `root`, which must be a directory.
    pub fn new(root: impl AsRef<Path>) -> io::Result<StaticDir> {
        let root = root.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a directory"));
        }
        Ok(StaticDir { root })
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Answers `req` from the directory: the file, a redirect to a
    /// directory's slash, or the error status (404, 403, 400, 405 for a
    /// method other than GET and HEAD).
    pub fn serve(&self, req: &Request<'_>, res: &mut Response) {
        if !matches!(req.method(), "GET" | "HEAD") {
            res.status(405).header("Allow", "GET, HEAD");
            return plain(res, "405 Method Not Allowed\n");
        }
        match self.lookup(req.path()) {
            Lookup::File(path) => self.send(req, res, &path),
            Lookup::Redirect(location) => {
                res.status(301).header("Location", location);
                plain(res, "301 Moved Permanently\n");
            }
            Lookup::Status(status, text) => {
                res.status(status);
                plain(res, text);
            }
        }
    }

    fn send(&self, req: &Request<'_>, res: &mut Response, path: &Path) {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(err) => return status_for(res, &err),
        };
        res.header("Content-Type", content_type(path));
        if let Err(err) = res.send_file(req, file) {
            status_for(res, &err);
        }
    }

    fn lookup(&self, raw_path: &str) -> Lookup {
        let Some(decoded) = percent_decode(raw_path) else {
            return Lookup::Status(400, "400 Bad Request: malformed path\n");
        };
        if !decoded.starts_with('/') || decoded.contains(['\0', '\\']) {
            return Lookup::Status(400, "400 Bad Request: malformed path\n");
        }
        let mut path = self.root.clone();
        for segment in decoded.split('/') {
            match segment {
                "" | "." => {}
                ".." => return Lookup::Status(403, "403 Forbidden\n"),
                segment => path.push(segment),
            }
        }
        let Ok(real) = path.canonicalize() else {
            return Lookup::Status(404, "404 Not Found\n");
        };
        if !real.starts_with(&self.root) {
            return Lookup::Status(403, "403 Forbidden\n");
        }
        if real.is_dir() {
            if !decoded.ends_with('/') {
                // One leading slash: `//host` would send the client away.
                return Lookup::Redirect(format!("/{}/", raw_path.trim_start_matches('/')));
            }
            let index = real.join("index.html");
            return match index.canonicalize() {
                Ok(index) if index.starts_with(&self.root) && index.is_file() => {
                    Lookup::File(index)
                }
                Ok(_) => Lookup::Status(403, "403 Forbidden\n"),
                Err(_) => Lookup::Status(404, "404 Not Found\n"),
            };
        }
        Lookup::File(real)
    }
}

/// As middleware: GET and HEAD requests for files that exist are answered
/// from the directory; anything else goes on down the chain (a route, the
/// fallback), refused traversal attempts included, which never reach a
/// file here.
impl Middleware for StaticDir {
    type State = ();

    fn state(&self, _slot: usize) {}

    fn call(&self, _state: &mut (), req: &Request<'_>, res: &mut Response, next: Next<'_>) {
        if matches!(req.method(), "GET" | "HEAD") {
            if let Lookup::File(path) = self.lookup(req.path()) {
                return self.send(req, res, &path);
            }
        }
        next.run(req, res)
    }
}

fn plain(res: &mut Response, text: &'static str) {
    res.header("Content-Type", "text/plain").body_static(text.as_bytes());
}

fn status_for(res: &mut Response, err: &io::Error) {
    let (status, text) = match err.kind() {
        io::ErrorKind::NotFound => (404, "404 Not Found\n"),
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => (403, "403 Forbidden\n"),
        _ => {
            log::warn!("static file could not be opened: {err}");
            (500, "500 Internal Server Error\n")
        }
    };
    res.status(status);
    plain(res, text);
}

/// `%XX` decoded; `None` for a malformed escape or bytes that are not
/// UTF-8 once decoded.
fn percent_decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The media type of a file by its extension: the common web types, and
/// `application/octet-stream` for the rest.
fn content_type(path: &Path) -> &'static str {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    match extension.to_ascii_lowercase().as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "csv" => "text/csv; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" => "application/gzip",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_decoded_once_and_traversal_is_refused() {
        let dir = std::env::temp_dir().join(format!("vigil-files-unit-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a.txt"), b"a").unwrap();
        let served = StaticDir::new(&dir).unwrap();
        let root = served.root().to_path_buf();
        assert_eq!(served.lookup("/a.txt"), Lookup::File(root.join("a.txt")));
        assert_eq!(served.lookup("/%61.txt"), Lookup::File(root.join("a.txt")));
        assert_eq!(served.lookup("/sub"), Lookup::Redirect("/sub/".into()));
        assert_eq!(served.lookup("//sub"), Lookup::Redirect("/sub/".into()), "not to a host");
        assert_eq!(served.lookup("/sub/").status(), Some(404), "no index.html");
        for refused in ["/../etc/passwd", "/%2e%2e/etc/passwd", "/sub/%2E%2E/%2e%2e/x"] {
            assert_eq!(served.lookup(refused).status(), Some(403), "{refused}");
        }
        for malformed in ["/a%00.txt", "/%zz", "/a%", "/a%5c..%5cx", "/%ff"] {
            assert_eq!(served.lookup(malformed).status(), Some(400), "{malformed}");
        }
        assert_eq!(served.lookup("/missing").status(), Some(404));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    impl Lookup {
        fn status(&self) -> Option<u16> {
            match self {
                Lookup::Status(status, _) => Some(*status),
                _ => None,
            }
        }
    }

    #[test]
    fn types_come_from_the_extension() {
        assert_eq!(content_type(Path::new("x/index.HTML")), "text/html; charset=utf-8");
        assert_eq!(content_type(Path::new("x.tar.gz")), "application/gzip");
        assert_eq!(content_type(Path::new("Makefile")), "application/octet-stream");
    }
}
