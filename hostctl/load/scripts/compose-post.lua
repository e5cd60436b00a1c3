-- DeathStarBench social network: compose a post (POST a small form body to the target URL).
local charset = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

local function text(length)
  local out = {}
  for i = 1, length do
    local c = math.random(1, #charset)
    out[i] = charset:sub(c, c)
  end
  return table.concat(out)
end

function request()
  local user_id = math.random(1, 962)
  local body = string.format("username=username_%d&user_id=%d&text=%s&media_ids=[]&media_types=[]&post_type=0",
                             user_id, user_id, text(64))
  return wrk.format("POST", wrk.path, {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end
