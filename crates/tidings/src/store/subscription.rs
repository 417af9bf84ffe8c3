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
    EventReader, EventStreamItem, Filter, Position, ReadAll, ReadStream, RecordedEvent, Revision,
    Start, StoreError,
};
use crate::stream::StreamId;

/// Events read per store call while catching up.
pub const PAGE: usize = 512;

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
    next: Option<Revision>,
    resolve_end: bool,
    buf: VecDeque<RecordedEvent>,
    done: bool,
}

/// A subscription to one stream, built on `reader` and the head watch `head`.
pub fn subscribe_stream<R>(
    reader: R,
    head: HeadWatch,
    stream: StreamId,
    start: Start,
) -> impl Stream<Item = EventStreamItem> + Send + 'static
where
    R: EventReader + 'static,
{
    let (next, resolve_end) = match start {
        Start::Beginning => (Some(0), false),
        Start::At(r) => (Some(r), false),
        Start::End => (None, true),
    };
    let state = StreamState {
        reader,
        head,
        stream,
        next,
        resolve_end,
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
            if s.resolve_end {
                match s.reader.stream_version(&s.stream).await {
                    Ok(v) => {
                        s.next = Some(v.map_or(0, |v| v + 1));
                        s.resolve_end = false;
                    }
                    Err(e) => {
                        s.done = true;
                        return Some((Err(e), s));
                    }
                }
            }
            let from = s.next.unwrap_or(0);
            let read = ReadStream::forward().from(from).limit(PAGE);
            match s.reader.read_stream(&s.stream, read).await {
                Ok(events) if !events.is_empty() => {
                    s.next = events.last().map(|e| e.revision + 1);
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
