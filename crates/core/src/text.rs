//! Text from outside (plugins, requests, operators) made safe to log.

/// Escape control characters (CR, LF, ESC, ...) and cap the length, so text
/// from plugins or requests cannot forge log lines or terminal output.
pub fn sanitize_for_log(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}
