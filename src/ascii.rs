//! Byte classes as tables of 256 entries: the bytes a channel name, an HTTP header name (a
//! token) or a plain request path may hold, looked up once per byte on the hot paths.

/// The table of ASCII letters, digits and `marks`.
pub(crate) const fn alphanumeric_and(marks: &[u8]) -> [bool; 256] {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < marks.len() {
        table[marks[i] as usize] = true;
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_holds_letters_digits_and_the_marks_given_and_no_other_byte() {
        let table = alphanumeric_and(b"-_.");
        for b in 0..=255u8 {
            assert_eq!(table[usize::from(b)], b.is_ascii_alphanumeric() || b"-_.".contains(&b), "byte {b}");
        }
    }
}
