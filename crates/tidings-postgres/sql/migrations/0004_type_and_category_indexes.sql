-- Indexed reads by event type and by stream category (the stream name up to its first
-- '-', the whole name when there is none; split_part gives exactly that). read_all.sql
-- filters on the same expressions, so a filtered read walks one of these indexes instead
-- of the whole log. See docs/decisions/0019-type-and-category-postings.md.

CREATE INDEX tidings_events_type ON tidings_events (event_type, position);

CREATE INDEX tidings_events_category
    ON tidings_events ((split_part(stream, '-', 1)), position);
