//! Catch-up subscriptions that turn live, for any backend that can read and can tell
//! when its head moves.
//!
//! A subscription never holds events of its own: it reads the store from the next
//! position it has not delivered, and when it has read everything it waits on the
//! store's head (a `tokio::sync::watch` the writer updates after each commit). Because
//! both the catch-up and the live phase are the same read, there is no switch-over where
//! an event could be missed or repeated, and dropping the stream loses nothing.

use std::collections::VecDeque;

use futures::Stream;
use tokio::sync::watch;

use super::{
    EventReader, EventStreamItem, Filter, PAGE, Position, ReadAll, ReadStream, RecordedEvent,
    Revision, Start, StoreError,
};
use crate::stream::StreamId;

/// The receiving side of a store's committed head (None: nothing committed yet).
pub type HeadWatch = watch::Receiver<Option<Position>>;

struct AllState<R> {
    reader: R,
    head: HeadWatch,
    next: Position,
    filter: Filter,
    buf: VecDeque<RecordedEvent>,
    done: bool,
}

/// A subscription to the global log, built on `reader` and the head watch `head`.
pub fn subscribe_all<R>(
    reader: R,
    mut head: HeadWatch,
    start: Start,
    filter: Filter,
) -> impl Stream<Item = EventStreamItem> + Send + 'static
where
    R: EventReader + 'static,
{
    let next = match start {
        Start::Beginning => 0,
        Start::At(p) => p,
        Start::End => head.borrow_and_update().map_or(0, |h| h + 1),
    };
    let state = AllState {
        reader,
        head,
        next,
        filter,
        buf: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.buf.pop_front() {
                return Some((Ok(e), s));
            }
            if s.done {
                return None;
            }
            let head = *s.head.borrow_and_update();
            match head {
                Some(h) if h >= s.next => {
                    let read = ReadAll::new(s.next, PAGE).filter(s.filter.clone());
                    match s.reader.read_all(read).await {
                        Ok(events) if events.is_empty() => s.next = h + 1,
                        Ok(events) => {
                            s.next = events.last().map_or(s.next, |e| e.position + 1);
                            s.buf.extend(events);
                        }
                        Err(e) => {
                            s.done = true;
                            return Some((Err(e), s));
                        }
                    }
                }
                _ => {
                    if s.head.changed().await.is_err() {
                        s.done = true;
                        return Some((Err(StoreError::Closed), s));
                    }
                }
            }
        }
    })
}

struct StreamState<R> {
    reader: R,
    head: HeadWatch,
    stream: StreamId,
    next: Revision,
    /// For `Start::End`: the global head when the subscription was made; the first
    /// revision to deliver is the first one committed after it.
    end_after: Option<Option<Position>>,
    buf: VecDeque<RecordedEvent>,
    done: bool,
}

/// A subscription to one stream, built on `reader` and the head watch `head`.
pub fn subscribe_stream<R>(
    reader: R,
    mut head: HeadWatch,
    stream: StreamId,
    start: Start,
) -> impl Stream<Item = EventStreamItem> + Send + 'static
where
    R: EventReader + 'static,
{
    let (next, end_after) = match start {
        Start::Beginning => (0, None),
        Start::At(r) => (r, None),
        Start::End => (0, Some(*head.borrow_and_update())),
    };
    let state = StreamState {
        reader,
        head,
        stream,
        next,
        end_after,
        buf: VecDeque::new(),
        done: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(e) = s.buf.pop_front() {
                return Some((Ok(e), s));
            }
            if s.done {
                return None;
            }
            s.head.borrow_and_update();
            if let Some(after) = s.end_after {
                match first_revision_after(&s.reader, &s.stream, after).await {
                    Ok(r) => {
                        s.next = r;
                        s.end_after = None;
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
            }
            let read = ReadStream::forward().from(s.next).limit(PAGE);
            match s.reader.read_stream(&s.stream, read).await {
                Ok(events) if !events.is_empty() => {
                    s.next = events.last().map_or(s.next, |e| e.revision + 1);
                    s.buf.extend(events);
                }
                Ok(_) => {
                    if s.head.changed().await.is_err() {
                        s.done = true;
                        return Some((Err(StoreError::Closed), s));
                    }
                }
                Err(e) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
            }
        }
    })
}

/// The first revision of `stream` whose position is after `head` (None: the store was
/// empty, so every revision is after it).
async fn first_revision_after<R: EventReader>(
    reader: &R,
    stream: &StreamId,
    head: Option<Position>,
) -> Result<Revision, StoreError> {
    let Some(head) = head else {
        return Ok(0);
    };
    let mut from = None;
    loop {
        let mut read = ReadStream::backward().limit(PAGE);
        read.from = from;
        let page = reader.read_stream(stream, read).await?;
        if let Some(e) = page.iter().find(|e| e.position <= head) {
            return Ok(e.revision + 1);
        }
        match page.last() {
            Some(e) if e.revision > 0 => from = Some(e.revision - 1),
            _ => return Ok(0),
        }
    }
}
