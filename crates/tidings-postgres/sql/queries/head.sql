-- The next position to hand out; the head is one less.
SELECT next_position FROM tidings_position
