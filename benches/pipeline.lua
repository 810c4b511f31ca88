-- wrk script: 16 pipelined GET requests per write.
-- wrk counts each response it parses, so requests/s counts single requests.
-- The request line and headers match what wrk sends without a script.
local depth = 16

init = function(args)
  local r = {}
  for i = 1, depth do
    r[i] = wrk.format()
  end
  req = table.concat(r)
end

request = function()
  return req
end
