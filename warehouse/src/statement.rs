//! SQL text cut into statements, and the statements ShardForge answers
//! before DataFusion sees them.
//!
//! DataFusion's parser reads `CREATE GLOBAL TEMPORARY VIEW` as a plain
//! temporary view (it drops `GLOBAL`), and plans no `SHOW TABLES IN db`.
//! Both are recognised here from the statement's tokens, with the same
//! tokenizer DataFusion uses, so quotes, comments and `;` inside strings
//! are read exactly as DataFusion reads them.

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

use crate::error::{Error, Result};
use crate::global_temp::CreateMode;

/// A statement ShardForge runs itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recognised {
    /// `CREATE [OR REPLACE] GLOBAL TEMP[ORARY] VIEW [IF NOT EXISTS] name AS query`.
    CreateGlobalView {
        /// The view's name as written (`v` or `global_temp.v`).
        name: String,
        /// What to do when it exists.
        mode: CreateMode,
        /// The query's text.
        query: String,
    },
    /// `SHOW TABLES IN|FROM [catalog.]db`.
    ShowTables {
        /// The catalog, when named.
        catalog: Option<String>,
        /// The database.
        db: String,
    },
}

fn tokens(text: &str) -> Result<Vec<TokenWithSpan>> {
    Tokenizer::new(&GenericDialect {}, text)
        .tokenize_with_location()
        .map_err(|e| Error::config("SQL", e.to_string()))
}

/// Byte offsets of the tokenizer's (line, column) locations in `text`.
struct Offsets {
    /// Byte offset where each line starts (line 1 first).
    lines: Vec<usize>,
}

impl Offsets {
    fn new(text: &str) -> Self {
        let mut lines = vec![0];
        lines.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Offsets { lines }
    }

    /// The byte offset of `at` (1-based line, 1-based column in characters).
    fn of(&self, text: &str, at: Location) -> usize {
        let line = usize::try_from(at.line).unwrap_or(usize::MAX).saturating_sub(1);
        let Some(&start) = self.lines.get(line) else {
            return text.len();
        };
        let column = usize::try_from(at.column).unwrap_or(usize::MAX).saturating_sub(1);
        text[start..]
            .char_indices()
            .nth(column)
            .map_or(text.len(), |(i, _)| start + i)
    }
}

fn is_blank(t: &Token) -> bool {
    matches!(t, Token::Whitespace(_) | Token::EOF)
}

/// `text` cut at every `;` that ends a statement (not those in strings,
/// quoted names or comments); statements with nothing but blanks and
/// comments are left out.
pub fn split(text: &str) -> Result<Vec<String>> {
    let tokens = tokens(text)?;
    let offsets = Offsets::new(text);
    let mut out = Vec::new();
    let mut start = 0;
    let mut seen = false;
    for t in &tokens {
        match &t.token {
            Token::SemiColon => {
                let end = offsets.of(text, t.span.start);
                if seen {
                    out.push(text[start..end].trim().to_string());
                }
                start = offsets.of(text, t.span.end);
                seen = false;
            }
            other if !is_blank(other) => seen = true,
            _ => {}
        }
    }
    if seen {
        out.push(text[start..].trim().to_string());
    }
    Ok(out)
}

/// [`split`], then every statement checked for syntax (by [`recognise`]
/// or DataFusion's parser), so a script with a typo anywhere runs none of
/// its statements.
pub fn split_checked(text: &str) -> Result<Vec<String>> {
    let statements = split(text)?;
    for s in &statements {
        if recognise(s)?.is_none() {
            datafusion::sql::parser::DFParser::parse_sql(s).map_err(|e| Error::config("SQL", e.to_string()))?;
        }
    }
    Ok(statements)
}

fn keyword(t: &Token, word: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

/// The statement, when it is one ShardForge runs itself.
pub fn recognise(statement: &str) -> Result<Option<Recognised>> {
    let all = tokens(statement)?;
    let offsets = Offsets::new(statement);
    // Significant tokens, with their place in `all`.
    let mut sig: Vec<&TokenWithSpan> = all.iter().filter(|t| !is_blank(&t.token)).collect();
    while sig.last().is_some_and(|t| t.token == Token::SemiColon) {
        sig.pop();
    }
    let at = |i: usize, word: &str| sig.get(i).is_some_and(|t| keyword(&t.token, word));
    if at(0, "SHOW") && at(1, "TABLES") && (at(2, "IN") || at(2, "FROM")) {
        let (parts, next) = dotted_name(&sig, 3);
        let (catalog, db) = match parts.as_slice() {
            [d] if next == sig.len() => (None, d.as_str()),
            [c, d] if next == sig.len() => (Some(c.as_str()), d.as_str()),
            _ => {
                return Err(Error::config(
                    "SQL",
                    format!(
                        "{statement:?}: SHOW TABLES IN takes a database, `db` or `catalog.db`, and nothing after it"
                    ),
                ));
            }
        };
        for p in catalog.iter().chain([&db]) {
            crate::names::check_part("database", p, statement)?;
        }
        return Ok(Some(Recognised::ShowTables {
            catalog: catalog.map(str::to_ascii_lowercase),
            db: db.to_ascii_lowercase(),
        }));
    }
    if !at(0, "CREATE") {
        return Ok(None);
    }
    let mut i = 1;
    let replace = at(i, "OR") && at(i + 1, "REPLACE");
    if replace {
        i += 2;
    }
    if !(at(i, "GLOBAL") && (at(i + 1, "TEMPORARY") || at(i + 1, "TEMP")) && at(i + 2, "VIEW")) {
        return Ok(None);
    }
    i += 3;
    let if_not_exists = at(i, "IF") && at(i + 1, "NOT") && at(i + 2, "EXISTS");
    if if_not_exists {
        i += 3;
    }
    let bad = |why: &str| Err(Error::config("SQL", format!("CREATE GLOBAL TEMPORARY VIEW: {why}")));
    if replace && if_not_exists {
        return bad("OR REPLACE and IF NOT EXISTS contradict each other; give one");
    }
    let (parts, next) = dotted_name(&sig, i);
    if parts.is_empty() {
        return bad("the view's name is missing");
    }
    if sig.get(next).is_some_and(|t| t.token == Token::LParen) {
        return bad("a column list is not supported; name the columns in the query (SELECT a AS x, ...)");
    }
    if !at(next, "AS") {
        return bad("expected AS and the query after the view's name");
    }
    let Some(first) = sig.get(next + 1) else {
        return bad("the query after AS is missing");
    };
    let end = sig
        .last()
        .map_or(statement.len(), |t| offsets.of(statement, t.span.end));
    let query = statement[offsets.of(statement, first.span.start)..end].to_string();
    let mode = match (replace, if_not_exists) {
        (true, _) => CreateMode::Replace,
        (_, true) => CreateMode::IgnoreIfExists,
        _ => CreateMode::ErrorIfExists,
    };
    Ok(Some(Recognised::CreateGlobalView {
        name: parts.join("."),
        mode,
        query,
    }))
}

/// `a.b.c` from `sig[from..]`: the names and the index after them.
fn dotted_name(sig: &[&TokenWithSpan], from: usize) -> (Vec<String>, usize) {
    let mut parts = Vec::new();
    let mut i = from;
    while let Some(Token::Word(w)) = sig.get(i).map(|t| &t.token) {
        parts.push(w.value.clone());
        i += 1;
        if sig.get(i).is_some_and(|t| t.token == Token::Period) {
            i += 1;
        } else {
            break;
        }
    }
    (parts, i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sf_manifest::Classified;

    #[test]
    fn statements_split_at_semicolons_outside_strings_and_comments() {
        let text = "SELECT 'a;b' AS x; -- c; d\n SELECT \"odd;name\" FROM t /* ; */ ;\n\n ; CREATE GLOBAL TEMP VIEW v AS SELECT ';'";
        let got = split(text).expect("split");
        assert_eq!(
            got,
            vec![
                "SELECT 'a;b' AS x",
                "-- c; d\n SELECT \"odd;name\" FROM t /* ; */",
                "CREATE GLOBAL TEMP VIEW v AS SELECT ';'",
            ]
        );
        assert_eq!(split("  -- nothing\n;;").expect("blank"), Vec::<String>::new());
        assert_eq!(split("SELECT 'é;ü' AS ö; SELECT 2").expect("utf8").len(), 2);
        assert!(split("SELECT 'open").is_err(), "an unterminated string is an error");
        assert_eq!(
            split_checked("CREATE GLOBAL TEMP VIEW v AS SELECT 1; SELECT * FROM global_temp.v")
                .expect("both parse")
                .len(),
            2
        );
        let e = split_checked("SELECT 1; SELEC 2").expect_err("typo");
        assert_eq!(e.kind(), sf_manifest::ErrorKind::Config);
    }

    #[test]
    fn global_views_are_recognised_with_their_mode_and_query() {
        let got = recognise("create or replace global temporary view Global_Temp.v AS\n  SELECT 1 AS n -- one")
            .expect("parse");
        assert_eq!(
            got,
            Some(Recognised::CreateGlobalView {
                name: "Global_Temp.v".into(),
                mode: CreateMode::Replace,
                query: "SELECT 1 AS n".into(),
            })
        );
        let got = recognise("/* x */ CREATE GLOBAL TEMP VIEW IF NOT EXISTS v AS WITH a AS (SELECT 1) SELECT * FROM a")
            .expect("parse");
        assert!(
            matches!(got, Some(Recognised::CreateGlobalView { mode: CreateMode::IgnoreIfExists, ref query, .. }) if query.starts_with("WITH a")),
            "{got:?}"
        );
        for plain in [
            "CREATE TEMPORARY VIEW v AS SELECT 1",
            "CREATE VIEW global_temp.v AS SELECT 1",
            "SELECT 'CREATE GLOBAL TEMPORARY VIEW v AS SELECT 1'",
            "CREATE GLOBAL TEMPORARY TABLE t (a INT)",
            "SHOW TABLES",
        ] {
            assert_eq!(recognise(plain).expect(plain), None, "{plain}");
        }
        for (bad, why) in [
            (
                "CREATE OR REPLACE GLOBAL TEMP VIEW IF NOT EXISTS v AS SELECT 1",
                "contradict",
            ),
            ("CREATE GLOBAL TEMP VIEW v (a) AS SELECT 1", "column list"),
            ("CREATE GLOBAL TEMP VIEW v SELECT 1", "expected AS"),
            ("CREATE GLOBAL TEMP VIEW AS SELECT 1", "expected AS"),
            ("CREATE GLOBAL TEMP VIEW v AS", "missing"),
        ] {
            let e = recognise(bad).expect_err(bad);
            assert!(e.to_string().contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn show_tables_in_a_database() {
        assert_eq!(
            recognise("SHOW TABLES IN global_temp").expect("parse"),
            Some(Recognised::ShowTables {
                catalog: None,
                db: "global_temp".into()
            })
        );
        assert_eq!(
            recognise("show tables from WH.Sales").expect("parse"),
            Some(Recognised::ShowTables {
                catalog: Some("wh".into()),
                db: "sales".into()
            })
        );
        assert!(recognise("SHOW TABLES IN a.b.c").is_err());
        assert!(recognise("SHOW TABLES IN x LIKE 'a%'").is_err());
    }
}
