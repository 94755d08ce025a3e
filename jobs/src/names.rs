//! User file names are display text only. This module cleans them for display and turns them
//! into safe, unique names for zip entries; they never become paths or storage keys.

use std::collections::HashSet;

use crate::pipeline::Format;

/// Longest display name kept, in characters.
pub const MAX_DISPLAY_CHARS: usize = 255;
/// Longest zip entry name, in characters (extension and de-duplication suffix included).
pub const MAX_ENTRY_CHARS: usize = 120;
/// Longest zip entry name in bytes of UTF-8: most file systems refuse names over 255 bytes.
pub const MAX_ENTRY_BYTES: usize = 255;

/// Characters that reorder or hide text (bidirectional controls, zero-width marks).
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// What the browser sent, without control or invisible characters, at most
/// [`MAX_DISPLAY_CHARS`] long; "unnamed" when nothing is left. Pages escape it when they show it.
pub fn display_name(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .filter(|c| !c.is_control() && !is_invisible(*c))
        .take(MAX_DISPLAY_CHARS)
        .collect();
    let trimmed = cleaned.trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == ".." {
        "unnamed".into()
    } else {
        trimmed.to_owned()
    }
}

/// One safe zip entry name: no path separators or reserved characters, no leading dots, a
/// length limit, and an extension that matches the content.
pub fn entry_name(display: &str, format: Format) -> String {
    let display = display_name(display);
    let base = display.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut name: String = base
        .chars()
        .map(|c| match c {
            '/' | '\\' | ':' | '*' | '?' | '"' | '<' | '>' | '|' => '_',
            c => c,
        })
        .collect();
    name = name
        .trim_start_matches(['.', ' '])
        .trim_end_matches(['.', ' '])
        .to_owned();
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext))
            if !stem.is_empty()
                && format
                    .known_exts()
                    .contains(&ext.to_ascii_lowercase().as_str()) =>
        {
            (stem.to_owned(), ext.to_owned())
        }
        _ => (name.clone(), format.ext().to_owned()),
    };
    let stem = if stem.is_empty() {
        "image".to_owned()
    } else {
        stem
    };
    let room = MAX_ENTRY_CHARS.saturating_sub(ext.chars().count() + 1 + 8);
    let room_bytes = MAX_ENTRY_BYTES.saturating_sub(ext.len() + 1 + 8);
    let mut bytes = 0;
    let stem: String = stem
        .chars()
        .take(room)
        .take_while(|c| {
            bytes += c.len_utf8();
            bytes <= room_bytes
        })
        .collect();
    format!("{}.{ext}", stem.trim_end())
}

/// Safe names for a list of files, made unique (case-insensitively) with " (2)", " (3)", ...
pub fn unique_entry_names<'a>(files: impl IntoIterator<Item = (&'a str, Format)>) -> Vec<String> {
    let mut taken: HashSet<String> = HashSet::new();
    // Reserved for the report of failures.
    taken.insert(REPORT_NAME.to_lowercase());
    let mut out = Vec::new();
    for (display, format) in files {
        let name = entry_name(display, format);
        let mut candidate = name.clone();
        let mut n = 2;
        while !taken.insert(candidate.to_lowercase()) {
            candidate = match name.rsplit_once('.') {
                Some((stem, ext)) => format!("{stem} ({n}).{ext}"),
                None => format!("{name} ({n})"),
            };
            n += 1;
        }
        out.push(candidate);
    }
    out
}

/// Name of the report listing the files that failed, inside the zip.
pub const REPORT_NAME: &str = "FAILED-FILES.txt";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_never_survive() {
        assert_eq!(
            entry_name("../../etc/passwd.jpg", Format::Jpeg),
            "passwd.jpg"
        );
        assert_eq!(entry_name("/abs/olute.png", Format::Png), "olute.png");
        assert_eq!(
            entry_name("C:\\Users\\x\\photo.JPG", Format::Jpeg),
            "photo.JPG"
        );
        assert_eq!(entry_name("..", Format::Png), "unnamed.png");
        assert_eq!(entry_name(".hidden.png", Format::Png), "hidden.png");
    }

    #[test]
    fn the_extension_follows_the_content() {
        assert_eq!(entry_name("IMG.JPG", Format::Jpeg), "IMG.JPG");
        assert_eq!(entry_name("photo.jpeg", Format::Jpeg), "photo.jpeg");
        assert_eq!(entry_name("notes.txt", Format::Png), "notes.txt.png");
        assert_eq!(entry_name("noext", Format::Jpeg), "noext.jpg");
    }

    #[test]
    fn hostile_characters_are_removed_or_replaced() {
        assert_eq!(
            entry_name("a\u{202E}gpj.exe\u{0007}.png", Format::Png),
            "agpj.exe.png"
        );
        assert_eq!(
            entry_name("<script>x</script>.png", Format::Png),
            "script_.png"
        );
        assert_eq!(entry_name("a<b>c|d?.png", Format::Png), "a_b_c_d_.png");
        assert_eq!(
            display_name("<script>alert(1)</script>.png"),
            "<script>alert(1)</script>.png"
        );
        assert_eq!(display_name("a\u{202E}b\nc"), "abc");
        let long = "x".repeat(300) + ".png";
        let name = entry_name(&long, Format::Png);
        assert!(
            name.chars().count() <= MAX_ENTRY_CHARS && name.ends_with(".png"),
            "{name}"
        );
        assert!(display_name(&long).chars().count() <= MAX_DISPLAY_CHARS);
        // Three bytes a character: the byte limit of file systems comes first.
        let wide = "名".repeat(300) + ".png";
        let names =
            unique_entry_names([(wide.as_str(), Format::Png), (wide.as_str(), Format::Png)]);
        for name in &names {
            assert!(
                name.len() <= MAX_ENTRY_BYTES && name.ends_with(".png") && name.starts_with("名名"),
                "{name}"
            );
        }
        assert!(names[1].ends_with(" (2).png"), "{}", names[1]);
    }

    #[test]
    fn duplicates_get_numbers() {
        let names = unique_entry_names([
            ("photo.jpg", Format::Jpeg),
            ("photo.jpg", Format::Jpeg),
            ("PHOTO.jpg", Format::Jpeg),
            ("dir/photo.jpg", Format::Jpeg),
            ("failed-files.txt", Format::Png),
        ]);
        assert_eq!(
            names,
            [
                "photo.jpg",
                "photo (2).jpg",
                "PHOTO (3).jpg",
                "photo (4).jpg",
                "failed-files.txt.png"
            ]
        );
    }
}
