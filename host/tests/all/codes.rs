//! The README's table of error codes is the `ErrorCode` enum, row for row.

use latchkey::error::ErrorCode;

#[test]
fn the_readme_lists_every_error_code_with_its_status() {
    let readme = include_str!("../../../README.md");
    let start = readme.find("<!-- error-codes").expect("the README's error-code table");
    let end = readme[start..].find("<!-- /error-codes -->").expect("the end of the table") + start;
    let rows: Vec<(String, u16, String)> = readme[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 3, "{l}");
            (cells[0].trim_matches('`').to_string(), cells[1].parse().expect(l), cells[2].to_string())
        })
        .collect();
    let want: Vec<(String, u16, String)> =
        ErrorCode::ALL.iter().map(|c| (c.as_str().to_string(), c.http_status(), c.summary().to_string())).collect();
    for (got, want) in rows.iter().zip(&want) {
        assert_eq!(got, want, "README row differs from the enum");
    }
    assert_eq!(rows.len(), want.len(), "the README's table and ErrorCode::ALL differ in length");
}
