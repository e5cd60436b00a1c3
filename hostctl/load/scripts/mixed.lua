-- DeathStarBench social network mixed workload, chosen per request: 60% home-timeline read,
-- 30% user-timeline read, 10% compose-post, all on the target's host and port.
local form = {["Content-Type"] = "application/x-www-form-urlencoded"}

local function read(path)
  local user_id = math.random(1, 962)
  local start = math.random(0, 100)
  return wrk.format("GET", string.format("%s?user_id=%d&start=%d&stop=%d", path, user_id, start, start + 10))
end

local function compose()
  local user_id = math.random(1, 962)
  local body = string.format("username=username_%d&user_id=%d&text=post-%d&media_ids=[]&media_types=[]&post_type=0",
                             user_id, user_id, math.random(1, 1000000))
  return wrk.format("POST", "/wrk2-api/post/compose", form, body)
end

function request()
  local pick = math.random()
  if pick < 0.6 then
    return read("/wrk2-api/home-timeline/read")
  elseif pick < 0.9 then
    return read("/wrk2-api/user-timeline/read")
  end
  return compose()
end
