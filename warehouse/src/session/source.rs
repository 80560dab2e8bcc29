//! Where a build's or a save's rows come from.

use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::Expr;

/// The rows of a build or a save: SQL text, a table or view by name, or a
/// DataFrame already built; each becomes a DataFrame of the session that
/// runs the build, so on a cluster every kind runs on the executors.
///
/// ```no_run
/// # async fn f(session: &sf_warehouse::Session) -> sf_warehouse::Result<()> {
/// use datafusion::prelude::{col, lit};
/// use sf_warehouse::Source;
///
/// let by_sql = Source::from_sql("SELECT id, name FROM wh.app.users WHERE id < 1000");
/// // Projection and key filters reach the table's scan (a point lookup
/// // for `id = x` / `id IN (...)`), as in SQL.
/// let by_table = Source::from_table("wh.app.users")
///     .select(["id", "name"])
///     .filter(col("id").in_list(vec![lit(1), lit(2)], false));
/// let df = session.context().read_parquet("events.parquet", Default::default()).await?;
/// let by_frame = Source::from_dataframe(df);
/// # let _ = (by_sql, by_table, by_frame);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Source {
    kind: Kind,
    steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    Sql(String),
    Table(String),
    Frame(Box<DataFrame>),
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Select(Vec<String>),
    Filter(Expr),
}

impl Source {
    /// The rows of a query (over warehouse tables, views, and whatever
    /// the session has registered). Statements that change something are
    /// refused.
    pub fn from_sql(sql: impl Into<String>) -> Self {
        Source {
            kind: Kind::Sql(sql.into()),
            steps: Vec::new(),
        }
    }

    /// The rows of table or view `name`, resolved as
    /// [`Session::table`](super::Session::table) resolves it (`cat.db.t`, `global_temp.v`, a
    /// session view, ...).
    pub fn from_table(name: impl Into<String>) -> Self {
        Source {
            kind: Kind::Table(name.into()),
            steps: Vec::new(),
        }
    }

    /// The rows of `df`, built by the caller (usually in a borrowed
    /// session); it is planned again in the session that runs the build.
    pub fn from_dataframe(df: DataFrame) -> Self {
        Source {
            kind: Kind::Frame(Box::new(df)),
            steps: Vec::new(),
        }
    }

    /// Only these columns, in this order.
    pub fn select<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.steps
            .push(Step::Select(columns.into_iter().map(Into::into).collect()));
        self
    }

    /// Only the rows for which `predicate` holds.
    pub fn filter(mut self, predicate: Expr) -> Self {
        self.steps.push(Step::Filter(predicate));
        self
    }

    /// What the source reads, for messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Sql(s) => format!("SQL {:?}", s.trim()),
            Kind::Table(t) => format!("table {t}"),
            Kind::Frame(_) => "a DataFrame".into(),
        }
    }

    /// The rows as a DataFrame of `session`.
    /// Where the rows come from, and the steps applied to them in order
    /// (resolved in a session by [`Session::dataframe`](super::Session::dataframe)).
    pub(crate) fn parts(&self) -> (&Kind, &[Step]) {
        (&self.kind, &self.steps)
    }
}
