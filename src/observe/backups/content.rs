//! What a backup's first bytes say it is. Pure: bytes in, [`Content`] out.
//!
//! - PostgreSQL custom format (`pg_dump -Fc`): the `PGDMP` magic, the
//!   archive version, integer and offset sizes, the format byte, the
//!   compression, the creation time, the database name, the server and
//!   pg_dump versions, and the count of table-of-contents entries, read
//!   field by field as `pg_restore` reads them (`ReadHead`, `ReadToc` in
//!   pg_backup_archiver.c). A header cut short or out of range is reported
//!   with the field that could not be read.
//! - PostgreSQL plain format: the comment pg_dump (or pg_dumpall) writes first.
//! - Neo4j `neo4j-admin database dump` files: the `DZV1` (zstd) or `DGV1`
//!   (gzip) header followed by its compressed stream's magic.
//!
//! Anything else is `Unrecognised`, naming what was found.

use serde::Serialize;

/// A backup's format, as its first bytes show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "format")]
pub enum Content {
    /// `pg_dump -Fc` with a header and table of contents that read.
    PostgresCustom {
        /// The archive format version, e.g. `1.16`.
        archive_version: String,
        database: String,
        /// pg_dump's version, as it wrote it.
        dump_version: String,
        toc_entries: u64,
        /// What `pg_restore --list` said of the bytes read, where it is
        /// installed (`None`: not run).
        #[serde(skip_serializing_if = "Option::is_none")]
        pg_restore: Option<String>,
    },
    /// A plain SQL dump, by pg_dump's or pg_dumpall's header comment.
    PostgresPlain { header: String },
    /// A Neo4j database dump, by its header.
    Neo4jDump { compression: &'static str },
    /// None of the above, or a header that does not read: what was found.
    Unrecognised { found: String },
    /// The store returned the listing but not the object's bytes.
    Unreadable { error: String },
}

impl Content {
    /// Whether the backup is one dbwarden recognises.
    pub fn recognised(&self) -> bool {
        !matches!(
            self,
            Content::Unrecognised { .. } | Content::Unreadable { .. }
        )
    }
}

/// Recognises a backup from its first bytes; `total` is the object's size.
pub fn inspect(head: &[u8], total: u64) -> Content {
    if head.is_empty() {
        return Content::Unrecognised {
            found: if total == 0 {
                "an empty object".into()
            } else {
                "no bytes returned".into()
            },
        };
    }
    if head.starts_with(b"PGDMP") {
        return match custom(head) {
            Ok(c) => c,
            Err(e) => Content::Unrecognised {
                found: format!("a pg_dump custom-format header that does not read: {e}"),
            },
        };
    }
    if let Some(header) = plain_header(head) {
        return Content::PostgresPlain { header };
    }
    let zstd = [0x28, 0xb5, 0x2f, 0xfd];
    let gzip = [0x1f, 0x8b];
    if head.starts_with(b"DZV1") && head[4..].starts_with(&zstd) {
        return Content::Neo4jDump {
            compression: "zstd",
        };
    }
    if head.starts_with(b"DGV1") && head[4..].starts_with(&gzip) {
        return Content::Neo4jDump {
            compression: "gzip",
        };
    }
    Content::Unrecognised {
        found: describe(head),
    }
}

/// Text pg_dump and pg_dumpall write on their first lines.
fn plain_header(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(&head[..head.len().min(512)]);
    let header = text
        .lines()
        .take(4)
        .map(|l| l.trim_start_matches("--").trim())
        .find(|l| !l.is_empty())?;
    let known = [
        "PostgreSQL database dump",
        "PostgreSQL database cluster dump",
    ];
    known.contains(&header).then(|| header.to_string())
}

/// A short, printable description of unknown bytes.
fn describe(head: &[u8]) -> String {
    let magic: &[(&[u8], &str)] = &[
        (&[0x1f, 0x8b], "a gzip stream"),
        (&[0x28, 0xb5, 0x2f, 0xfd], "a zstd stream"),
        (b"PK\x03\x04", "a zip archive"),
        (b"BZh", "a bzip2 stream"),
        (&[0xfd, b'7', b'z', b'X', b'Z'], "an xz stream"),
    ];
    if let Some((_, what)) = magic.iter().find(|(m, _)| head.starts_with(m)) {
        return format!("{what} (its contents are not inspected)");
    }
    let shown: String = head
        .iter()
        .take(16)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                (b as char).to_string()
            } else {
                format!("\\x{b:02x}")
            }
        })
        .collect();
    format!("{} bytes starting {shown:?}", head.len())
}

/// pg_dump's archive formats (`ArchiveFormat`).
const FORMAT_CUSTOM: u8 = 1;

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    int_size: usize,
    version: (u8, u8, u8),
}

impl Reader<'_> {
    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| format!("cut short before {what} (byte {})", self.at))?;
        self.at += 1;
        Ok(b)
    }

    /// `ReadInt`: a sign byte, then `int_size` bytes, least significant first.
    fn int(&mut self, what: &str) -> Result<i64, String> {
        let negative = self.byte(what)? != 0;
        let mut v: i64 = 0;
        for i in 0..self.int_size {
            let b = i64::from(self.byte(what)?);
            if i < 8 {
                v |= b << (8 * i);
            }
        }
        Ok(if negative { -v } else { v })
    }

    /// `ReadStr`: a length (negative for NULL), then the bytes.
    fn string(&mut self, what: &str) -> Result<String, String> {
        let len = self.int(what)?;
        if len < 0 {
            return Ok(String::new());
        }
        let len = usize::try_from(len).map_err(|_| format!("{what}: length {len}"))?;
        if len > 64 * 1024 {
            return Err(format!("{what}: implausible length {len}"));
        }
        let end = self.at + len;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or_else(|| format!("cut short inside {what}"))?;
        self.at = end;
        Ok(String::from_utf8_lossy(s).into_owned())
    }

    fn at_least(&self, v: (u8, u8)) -> bool {
        (self.version.0, self.version.1) >= v
    }
}

fn custom(head: &[u8]) -> Result<Content, String> {
    let mut r = Reader {
        bytes: head,
        at: 5,
        int_size: 4,
        version: (0, 0, 0),
    };
    let major = r.byte("the version")?;
    let minor = r.byte("the version")?;
    let rev = if major > 1 || (major == 1 && minor > 0) {
        r.byte("the version")?
    } else {
        0
    };
    r.version = (major, minor, rev);
    if major != 1 || minor < 7 {
        return Err(format!(
            "archive version {major}.{minor} is not one pg_restore reads (1.7 or later)"
        ));
    }
    let int_size = r.byte("the integer size")?;
    if !(1..=8).contains(&int_size) {
        return Err(format!("integer size {int_size}"));
    }
    r.int_size = usize::from(int_size);
    let off_size = r.byte("the offset size")?;
    if !(1..=8).contains(&off_size) {
        return Err(format!("offset size {off_size}"));
    }
    let format = r.byte("the format")?;
    if format != FORMAT_CUSTOM {
        return Err(format!(
            "format {format} is not the custom format (1): a tar or directory archive's file"
        ));
    }
    if r.at_least((1, 15)) {
        r.byte("the compression")?;
    } else {
        r.int("the compression")?;
    }
    for what in [
        "the creation seconds",
        "the creation minutes",
        "the creation hour",
        "the creation day",
        "the creation month",
        "the creation year",
        "the creation DST flag",
    ] {
        r.int(what)?;
    }
    let database = r.string("the database name")?;
    let dump_version = if r.at_least((1, 10)) {
        r.string("the server version")?;
        r.string("pg_dump's version")?
    } else {
        String::new()
    };
    let toc = r.int("the table of contents' size")?;
    if toc < 0 {
        return Err(format!("table of contents of {toc} entries"));
    }
    Ok(Content::PostgresCustom {
        archive_version: format!("{major}.{minor}"),
        database,
        dump_version,
        toc_entries: toc as u64,
        pg_restore: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom-format header as pg_dump 17 writes it (archive 1.16, 4-byte ints).
    fn header(toc: i32) -> Vec<u8> {
        let int = |v: i32| {
            let mut b = vec![u8::from(v < 0)];
            b.extend(v.unsigned_abs().to_le_bytes());
            b
        };
        let string = |s: &str| {
            let mut b = int(s.len() as i32);
            b.extend(s.as_bytes());
            b
        };
        let mut h = b"PGDMP".to_vec();
        h.extend([1, 16, 0, 4, 8, FORMAT_CUSTOM, 0]);
        for v in [5, 4, 3, 6, 11, 126, 0] {
            h.extend(int(v));
        }
        h.extend(string("app"));
        h.extend(string("17.2"));
        h.extend(string("17.2"));
        h.extend(int(toc));
        h
    }

    #[test]
    fn a_custom_format_header_reads() {
        let c = inspect(&header(42), 10_000);
        assert_eq!(
            c,
            Content::PostgresCustom {
                archive_version: "1.16".into(),
                database: "app".into(),
                dump_version: "17.2".into(),
                toc_entries: 42,
                pg_restore: None,
            }
        );
        assert!(c.recognised());
    }

    #[test]
    fn a_cut_header_names_the_field_it_lacks() {
        let h = header(42);
        let Content::Unrecognised { found } = inspect(&h[..30], 30) else {
            panic!("recognised a cut header");
        };
        assert!(found.contains("custom-format header"), "{found}");
        assert!(found.contains("cut short"), "{found}");
        let mut tar = h.clone();
        tar[10] = 3;
        let Content::Unrecognised { found } = inspect(&tar, 100) else {
            panic!();
        };
        assert!(found.contains("format 3"), "{found}");
    }

    #[test]
    fn plain_dumps_neo4j_dumps_and_others() {
        let plain = b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n";
        assert_eq!(
            inspect(plain, 100),
            Content::PostgresPlain {
                header: "PostgreSQL database dump".into()
            }
        );
        let neo4j = [b"DZV1".as_slice(), &[0x28, 0xb5, 0x2f, 0xfd, 0]].concat();
        assert_eq!(
            inspect(&neo4j, 100),
            Content::Neo4jDump {
                compression: "zstd"
            }
        );
        let Content::Unrecognised { found } = inspect(&[], 0) else {
            panic!()
        };
        assert_eq!(found, "an empty object");
        let Content::Unrecognised { found } = inspect(&[0x1f, 0x8b, 8, 0], 4) else {
            panic!()
        };
        assert!(found.starts_with("a gzip stream"), "{found}");
        let Content::Unrecognised { found } = inspect(b"hello\x00", 6) else {
            panic!()
        };
        assert_eq!(found, "6 bytes starting \"hello\\\\x00\"");
    }
}
