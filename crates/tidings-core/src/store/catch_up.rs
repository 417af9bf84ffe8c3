//! [`CatchUp`]: reads the global log from a position to its head, a page at a time.

use super::{EventReader, Filter, PAGE, Position, ReadAll, RecordedEvent, StoreError};

/// Pages through the global log from a position to the store's current head: what a
/// projection or a saga runtime does before it goes live, checkpointing between pages.
///
/// It keeps no reference to the store, so its owner can change itself between pages.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tidings::store::CatchUp;
/// use tidings::{Enricher, EventAppender, ExpectedVersion, Filter, InMemoryStore, NewEvent, StreamId};
/// let store = InMemoryStore::new();
/// let e = Enricher::new("shop").enrich(NewEvent::new("OrderCreated", serde_json::json!({}))).unwrap();
/// store.append(&StreamId::new("order-1").unwrap(), ExpectedVersion::Any, vec![e]).await.unwrap();
/// let mut pages = CatchUp::new(0, Filter::all());
/// let mut seen = 0;
/// while let Some(page) = pages.next_page(&store).await.unwrap() {
///     seen += page.len();
/// }
/// assert_eq!((seen, pages.position()), (1, 1));
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct CatchUp {
    next: Position,
    filter: Filter,
}

impl CatchUp {
    /// Reads events that pass `filter`, from global position `from`.
    pub fn new(from: Position, filter: Filter) -> Self {
        Self { next: from, filter }
    }

    /// The next position to read: every event before it has been returned (or did not
    /// pass the filter).
    pub fn position(&self) -> Position {
        self.next
    }

    /// The next page of at most [`PAGE`] events, or None at the head.
    pub async fn next_page<R: EventReader + ?Sized>(
        &mut self,
        store: &R,
    ) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let page = store
            .read_all(ReadAll::new(self.next, PAGE).filter(self.filter.clone()))
            .await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(None);
        };
        self.next = last + 1;
        Ok(Some(page))
    }
}
