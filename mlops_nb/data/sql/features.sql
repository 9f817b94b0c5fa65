-- One row a flight that arrived, with what was known before it left: the schedule, the route, the carrier
-- and the plane. The weather and the other point-in-time features are not joined here: the features task adds
-- them by the feature store's offline join, as of each flight's prediction time (features.yaml, features.lead).
-- Never used (they leak the outcome): dep_time, dep_delay, arr_time, air_time, and arr_delay beyond the
-- label. Cancelled or diverted flights have no arr_delay, hence no label: they are dropped here and
-- counted in the feature set's row_counts ('dropped_no_arrival').
-- Label: late = arr_delay > 15 minutes.
-- Placeholders: {snapshot} (schema), {planes} (table or an empty stand-in), {train}, {valid}, {test}.
WITH planes AS (
    SELECT tailnum, min(year) AS plane_year, min(seats) AS plane_seats FROM {planes} GROUP BY tailnum
)
SELECT
    CAST(f.year AS INTEGER) AS year,
    CAST(f.month AS INTEGER) AS month,
    CAST(f.day AS INTEGER) AS day,
    CAST(f.sched_dep_time AS INTEGER) AS sched_dep_time,
    CAST(f.sched_arr_time AS INTEGER) AS sched_arr_time,
    f.carrier,
    CAST(f.flight AS INTEGER) AS flight,
    f.origin,
    f.dest,
    CAST(f.distance AS DOUBLE) AS distance,
    CAST(p.plane_year AS DOUBLE) AS plane_year,
    CAST(p.plane_seats AS DOUBLE) AS plane_seats,
    CAST(f.arr_delay > 15 AS INTEGER) AS late,
    CASE WHEN f.month IN ({train}) THEN 'train'
         WHEN f.month IN ({valid}) THEN 'valid'
         WHEN f.month IN ({test}) THEN 'test' END AS split
FROM {snapshot}.flights AS f
LEFT JOIN planes AS p ON p.tailnum = f.tailnum
WHERE f.arr_delay IS NOT NULL
  AND f.month IN ({train}, {valid}, {test})
ORDER BY ALL  -- every column: a deterministic order, so the same snapshot gives the same frames
