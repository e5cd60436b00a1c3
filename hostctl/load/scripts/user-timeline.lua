-- DeathStarBench social network: read the posts of one user (GET the target URL with user_id, start, stop).
function request()
  local user_id = math.random(1, 962)
  local start = math.random(0, 100)
  local path = string.format("%s?user_id=%d&start=%d&stop=%d", wrk.path, user_id, start, start + 10)
  return wrk.format("GET", path)
end
