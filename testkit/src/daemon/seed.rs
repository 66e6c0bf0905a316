//! Rows for migration tests at any schema version, without knowing the schema:
//! `fill` introspects every table (`PRAGMA table_info`, `foreign_key_list` and
//! the CHECK constraints in its SQL) and inserts rows that satisfy it, parents
//! before children; `snapshot` reads every row back, keyed by column name.
//! The introspection (`columns`, `foreign_keys`, `checks`, `table_sql`) also
//! serves the daemon bench's SQL seeder.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rusqlite::types::Value;
use rusqlite::{Connection, params_from_iter};

/// One row: column name → value.
pub type Row = BTreeMap<String, Value>;
/// Every table's rows, ordered by primary key.
pub type Snapshot = BTreeMap<String, Vec<Row>>;

/// Event types as the daemon writes them; some are ones the severity backfill
/// (migration 13) classifies, so it has something to do.
pub const EVENT_TYPES: &[&str] = &[
    "WALLET_CREATED",
    "TX_SUBMITTED",
    "TX_FAILED",
    "POLICY_DENIED",
    "KILL_SWITCH_ACTIVATED",
    "SESSION_CREATED",
];

/// The application's tables: everything but `schema_version` and SQLite's own.
pub fn tables(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table'
             AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name <> 'schema_version'
             ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

pub struct Column {
    pub name: String,
    /// Upper case.
    pub decl_type: String,
    pub not_null: bool,
    /// 1-based position in the primary key, 0 when not part of it.
    pub pk: i64,
}

/// The columns of `table`, in order.
pub fn columns(conn: &Connection, table: &str) -> Vec<Column> {
    let mut stmt = conn
        .prepare("SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid")
        .unwrap();
    stmt.query_map([table], |r| {
        Ok(Column {
            name: r.get(0)?,
            decl_type: r.get::<_, String>(1)?.to_uppercase(),
            not_null: r.get(2)?,
            pk: r.get(3)?,
        })
    })
    .unwrap()
    .collect::<rusqlite::Result<_>>()
    .unwrap()
}

fn primary_key(conn: &Connection, table: &str) -> Vec<String> {
    let mut pk: Vec<(i64, String)> = columns(conn, table)
        .into_iter()
        .filter(|c| c.pk > 0)
        .map(|c| (c.pk, c.name))
        .collect();
    pk.sort();
    pk.into_iter().map(|(_, name)| name).collect()
}

/// column → (parent table, parent column).
pub fn foreign_keys(conn: &Connection, table: &str) -> HashMap<String, (String, String)> {
    let mut stmt = conn
        .prepare("SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1)")
        .unwrap();
    let rows: Vec<(String, String, Option<String>)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    rows.into_iter()
        .map(|(from, parent, to)| {
            // `REFERENCES parent` without a column means the parent's primary key.
            let to = to.unwrap_or_else(|| primary_key(conn, &parent).remove(0));
            (from, (parent, to))
        })
        .collect()
}

/// Tables ordered so every table comes after the tables it references.
fn parents_first(conn: &Connection, tables: &[String]) -> Vec<String> {
    let present: BTreeSet<&String> = tables.iter().collect();
    let mut placed: Vec<String> = Vec::new();
    let mut pending: Vec<(String, BTreeSet<String>)> = tables
        .iter()
        .map(|t| {
            let parents = foreign_keys(conn, t)
                .into_values()
                .map(|(parent, _)| parent)
                .filter(|p| p != t && present.contains(p))
                .collect();
            (t.clone(), parents)
        })
        .collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|(table, parents)| {
            if parents.iter().all(|p| placed.contains(p)) {
                placed.push(table.clone());
                false
            } else {
                true
            }
        });
        assert!(
            pending.len() < before,
            "foreign-key cycle among {pending:?}"
        );
    }
    placed
}

/// The allowed values a CHECK constraint names for a column.
#[derive(Debug)]
pub enum Allowed {
    OneOf(Vec<Value>),
    Between(i64, i64),
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Text(String),
    Number(i64),
    Punct(char),
}

fn tokenize(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '\'' || c == '"' {
            // A quoted string or identifier; a doubled quote is an escaped one.
            let mut text = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == c && chars.get(i + 1) == Some(&c) {
                    text.push(c);
                    i += 2;
                } else if chars[i] == c {
                    i += 1;
                    break;
                } else {
                    text.push(chars[i]);
                    i += 1;
                }
            }
            tokens.push(if c == '\'' {
                Token::Text(text)
            } else {
                Token::Word(text)
            });
        } else if c.is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let digits: String = chars[start..i].iter().collect();
            tokens.push(Token::Number(digits.parse().unwrap()));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(Token::Word(chars[start..i].iter().collect()));
        } else {
            tokens.push(Token::Punct(c));
            i += 1;
        }
    }
    tokens
}

fn is_word(token: Option<&Token>, word: &str) -> bool {
    matches!(token, Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
}

/// `CHECK (col IN (...))` and `CHECK (col BETWEEN a AND b)` of a CREATE TABLE
/// statement, by column (the forms this schema uses).
pub fn checks(create_sql: &str) -> HashMap<String, Allowed> {
    let tokens = tokenize(create_sql);
    let mut found = HashMap::new();
    for i in 0..tokens.len() {
        if !is_word(tokens.get(i), "check") || tokens.get(i + 1) != Some(&Token::Punct('(')) {
            continue;
        }
        let Some(Token::Word(column)) = tokens.get(i + 2) else {
            continue;
        };
        if is_word(tokens.get(i + 3), "in") && tokens.get(i + 4) == Some(&Token::Punct('(')) {
            let mut values = Vec::new();
            for token in &tokens[i + 5..] {
                match token {
                    Token::Text(t) => values.push(Value::Text(t.clone())),
                    Token::Number(n) => values.push(Value::Integer(*n)),
                    Token::Punct(',') => {}
                    _ => break,
                }
            }
            found.insert(column.to_lowercase(), Allowed::OneOf(values));
        } else if is_word(tokens.get(i + 3), "between") && is_word(tokens.get(i + 5), "and") {
            if let (Some(Token::Number(lo)), Some(Token::Number(hi))) =
                (tokens.get(i + 4), tokens.get(i + 6))
            {
                found.insert(column.to_lowercase(), Allowed::Between(*lo, *hi));
            }
        }
    }
    found
}

/// The CREATE TABLE statement of `table`.
pub fn table_sql(conn: &Connection, table: &str) -> String {
    conn.query_row(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |r| r.get(0),
    )
    .unwrap()
}

fn key_values(conn: &Connection, table: &str, column: &str) -> Vec<Value> {
    let sql = format!("SELECT \"{column}\" FROM \"{table}\" ORDER BY rowid");
    let mut stmt = conn.prepare(&sql).unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// Inserts `rows_per_table` rows into every application table, parents first,
/// with values chosen by column name and type that satisfy the schema's CHECK
/// constraints, UNIQUE columns and foreign keys. Nullable columns are NULL in
/// every third row, so NULLs are carried through migrations too. Can be
/// called again on the same database: row numbering continues.
pub fn fill(conn: &Connection, rows_per_table: usize) {
    let tx = conn.unchecked_transaction().unwrap();
    let all = tables(&tx);
    for table in parents_first(&tx, &all) {
        let cols = columns(&tx, &table);
        let fks = foreign_keys(&tx, &table);
        let allowed = checks(&table_sql(&tx, &table));
        let already: usize = tx
            .query_row(&format!("SELECT count(*) FROM \"{table}\""), [], |r| {
                r.get::<_, i64>(0)
            })
            .unwrap()
            .try_into()
            .unwrap();
        // An INTEGER PRIMARY KEY is the rowid: SQLite assigns it.
        let inserted: Vec<&Column> = cols
            .iter()
            .filter(|c| !(c.pk == 1 && c.decl_type == "INTEGER"))
            .collect();
        let names: Vec<String> = inserted.iter().map(|c| format!("\"{}\"", c.name)).collect();
        let marks: Vec<String> = (1..=inserted.len()).map(|i| format!("?{i}")).collect();
        let sql = format!(
            "INSERT INTO \"{table}\" ({}) VALUES ({})",
            names.join(", "),
            marks.join(", ")
        );
        for n in already..already + rows_per_table {
            let values: Vec<Value> = inserted
                .iter()
                .enumerate()
                .map(|(position, col)| {
                    value_for(&tx, &all, &table, col, position, n, &fks, &allowed)
                })
                .collect();
            tx.execute(&sql, params_from_iter(values))
                .unwrap_or_else(|e| panic!("seeding {table} row {n}: {e}"));
        }
    }
    tx.commit().unwrap();
}

#[allow(clippy::too_many_arguments)]
fn value_for(
    conn: &Connection,
    tables: &[String],
    table: &str,
    col: &Column,
    position: usize,
    n: usize,
    fks: &HashMap<String, (String, String)>,
    allowed: &HashMap<String, Allowed>,
) -> Value {
    let name = col.name.to_lowercase();
    let nullable = !col.not_null && col.pk == 0;
    let pick = |values: Vec<Value>| -> Value {
        if values.is_empty() {
            assert!(nullable, "{table}.{name}: no parent rows to reference");
            Value::Null
        } else {
            values[n % values.len()].clone()
        }
    };
    if let Some((parent, to)) = fks.get(&col.name) {
        if nullable && n % 3 == 2 {
            return Value::Null;
        }
        return pick(key_values(conn, parent, to));
    }
    if nullable && n % 3 == 2 {
        return Value::Null;
    }
    match allowed.get(&name) {
        Some(Allowed::OneOf(values)) => return pick(values.clone()),
        Some(Allowed::Between(lo, hi)) => {
            let span = (hi - lo + 1) as usize;
            return Value::Integer(lo + (n % span) as i64);
        }
        None => {}
    }
    // `wallet_id` without a foreign key (audit_log) still names a real wallet.
    if let Some(stem) = name.strip_suffix("_id") {
        let target = format!("{stem}s");
        if tables.contains(&target) {
            let pk = primary_key(conn, &target);
            if let [key] = pk.as_slice() {
                return pick(key_values(conn, &target, key));
            }
        }
    }
    let n64 = n as i64;
    match name.as_str() {
        "timestamp" => return Value::Integer(1_700_000_000 + n64 * 60),
        _ if name.ends_with("_at") => {
            return Value::Integer(1_700_000_000 + n64 * 60 + position as i64);
        }
        "event_type" => return Value::Text(EVENT_TYPES[n % EVENT_TYPES.len()].to_string()),
        "details" | "rules" => return Value::Text(format!("{{\"seed\":{n}}}")),
        "scopes" => return Value::Text("[\"wallets:read\"]".to_string()),
        _ => {}
    }
    if col.decl_type.contains("INT") {
        Value::Integer(n64 + 1)
    } else if col.decl_type.contains("REAL") || col.decl_type.contains("FLOA") {
        Value::Real(n as f64 + 0.5)
    } else {
        // Unique per table, column and row: satisfies every UNIQUE constraint.
        Value::Text(format!("{table}.{name}.{n}"))
    }
}

/// Every row of every application table, ordered by primary key (by rowid
/// when there is none), each as column → value.
pub fn snapshot(conn: &Connection) -> Snapshot {
    let mut out = Snapshot::new();
    for table in tables(conn) {
        let pk = primary_key(conn, &table);
        let order = if pk.is_empty() {
            "rowid".to_string()
        } else {
            pk.iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{table}\" ORDER BY {order}"))
            .unwrap();
        let names: Vec<String> = stmt.column_names().map(String::from).collect();
        let rows = stmt
            .query_map([], |r| {
                names
                    .iter()
                    .enumerate()
                    .map(|(i, name)| Ok((name.clone(), r.get::<_, Value>(i)?)))
                    .collect::<rusqlite::Result<Row>>()
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<Row>>>()
            .unwrap();
        out.insert(table, rows);
    }
    out
}
