//! The CSV PostgreSQL and pgAudit write: fields separated by commas; a field holding a
//! comma, a double quote, CR or LF is wrapped in double quotes with inner quotes doubled.
//! An unquoted empty field is NULL (`None`); a quoted empty field is the empty string.

/// A line that is not valid CSV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    #[error("a quoted field is not closed")]
    Unterminated,
    #[error("text after a closing quote at byte {0}")]
    AfterQuote(usize),
}

/// Splits one CSV record into fields.
pub fn split(record: &str) -> Result<Vec<Option<String>>, CsvError> {
    let bytes = record.as_bytes();
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        if bytes.get(i) == Some(&b'"') {
            let mut value = String::new();
            let mut start = i + 1;
            let mut j = start;
            loop {
                match bytes.get(j) {
                    None => return Err(CsvError::Unterminated),
                    Some(b'"') if bytes.get(j + 1) == Some(&b'"') => {
                        value.push_str(&record[start..=j]);
                        j += 2;
                        start = j;
                    }
                    Some(b'"') => {
                        value.push_str(&record[start..j]);
                        j += 1;
                        break;
                    }
                    Some(_) => j += 1,
                }
            }
            fields.push(Some(value));
            match bytes.get(j) {
                None => return Ok(fields),
                Some(b',') => i = j + 1,
                Some(_) => return Err(CsvError::AfterQuote(j)),
            }
        } else {
            let end = record[i..].find(',').map_or(record.len(), |n| i + n);
            let value = &record[i..end];
            fields.push((!value.is_empty()).then(|| value.to_string()));
            if end == record.len() {
                return Ok(fields);
            }
            i = end + 1;
        }
    }
}

/// Whether `text` ends inside a quoted field (a CSV record continues on the next line).
pub fn inside_quotes(text: &str) -> bool {
    // Quotes only open at a field start and close before a comma or the end, so counting
    // them is enough: doubled quotes inside a field add two.
    text.bytes().filter(|b| *b == b'"').count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|f| f.map(str::to_string)).collect()
    }

    #[test]
    fn quoting_as_postgres_writes_it() {
        assert_eq!(split("a,,\"\",\"x,y\"").unwrap(), s(&[Some("a"), None, Some(""), Some("x,y")]));
        assert_eq!(split("\"say \"\"hi\"\"\",2").unwrap(), s(&[Some("say \"hi\""), Some("2")]));
        assert_eq!(split("\"two\nlines\"").unwrap(), s(&[Some("two\nlines")]));
        assert_eq!(split("").unwrap(), s(&[None]));
        assert_eq!(split("a,").unwrap(), s(&[Some("a"), None]));
        assert_eq!(split("\"open"), Err(CsvError::Unterminated));
        assert_eq!(split("\"a\"b"), Err(CsvError::AfterQuote(3)));
        assert!(inside_quotes("1,\"multi"));
        assert!(!inside_quotes("1,\"multi\nline\",\"\"\"q\"\"\""));
    }
}
